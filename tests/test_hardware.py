"""Hardware detection against recorded nvidia-smi answers and /proc, /sys driver files.

A GPU cannot exist on this machine, so a fake `nvidia-smi` script on PATH replays what real ones
printed (tests/data/nvidia/*).  Everything else (platform, Python, torch metadata) is real.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mlenv.hardware import detect
from tests.conftest import NVIDIA, gpu_env


def probe(tmp_path: Path, case: str | None, monkeypatch: pytest.MonkeyPatch, **files) -> detect.GpuProbe:
    env = gpu_env(tmp_path, case, **files)
    monkeypatch.setenv("MLENV_NVIDIA_PROC_VERSION", env["MLENV_NVIDIA_PROC_VERSION"])
    monkeypatch.setenv("MLENV_NVIDIA_SYS_VERSION", env["MLENV_NVIDIA_SYS_VERSION"])
    return detect.probe_gpus(env=env)


def test_no_nvidia_smi_is_the_normal_case(tmp_path, monkeypatch):
    result = probe(tmp_path, None, monkeypatch)
    assert result == detect.GpuProbe(gpus=[], driver=None, error=None)
    monkeypatch.setenv("PATH", gpu_env(tmp_path, None)["PATH"])
    assert detect.detect_gpus() == []
    assert detect.driver_version() is None


def test_one_tesla_t4(tmp_path, monkeypatch):
    result = probe(tmp_path, "t4", monkeypatch)
    assert result.gpus == [detect.GpuInfo("Tesla T4", "t4", 15360, "535.183.01", "7.5")]
    assert result.driver == "535.183.01" and result.error is None


def test_one_a10g(tmp_path, monkeypatch):
    (gpu,) = probe(tmp_path, "a10g", monkeypatch).gpus
    assert (gpu.name, gpu.model, gpu.memory_mb, gpu.compute_cap) == ("NVIDIA A10G", "a10g", 23028, "8.6")


@pytest.mark.parametrize("case, model, memory, driver, sm", [
    ("8xa100", "a100", 40960, "550.90.07", "8.0"),
    ("8xh100", "h100", 81559, "560.35.03", "9.0"),
])
def test_eight_gpus(tmp_path, monkeypatch, case, model, memory, driver, sm):
    result = probe(tmp_path, case, monkeypatch)
    assert len(result.gpus) == 8
    assert {(g.model, g.memory_mb, g.driver, g.compute_cap) for g in result.gpus} == {(model, memory, driver, sm)}
    assert result.driver == driver


def test_old_driver_without_compute_cap_field(tmp_path, monkeypatch):
    # 470 rejects the compute_cap field; mlenv asks again without it and takes sm from the catalog
    result = probe(tmp_path, "old-470", monkeypatch)
    assert [g.name for g in result.gpus] == ["Tesla V100-SXM2-16GB"] * 4
    assert {(g.model, g.compute_cap, g.driver) for g in result.gpus} == {("v100", "7.0", "470.256.02")}
    assert detect.cuda_for_driver(result.driver) is None
    assert detect.cuda_for_driver(result.driver, compat=True) == "11.8"


def test_failing_nvidia_smi_reports_why_and_falls_back_to_proc(tmp_path, monkeypatch):
    result = probe(tmp_path, "failing", monkeypatch)
    assert result.gpus == []
    assert result.error.startswith("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver")
    assert result.driver is None
    with_proc = probe(tmp_path, "failing", monkeypatch, proc="535.183.01.txt")
    assert (with_proc.gpus, with_proc.driver) == ([], "535.183.01")


def test_no_devices_found(tmp_path, monkeypatch):
    result = probe(tmp_path, "no-gpu-listed", monkeypatch, sys_file="550.90.07.txt")
    assert result.gpus == [] and result.error == "No devices were found"
    assert result.driver == "550.90.07"


def test_gpu_missing_from_catalog_keeps_its_facts(tmp_path, monkeypatch):
    (gpu,) = probe(tmp_path, "unknown-gpu", monkeypatch).gpus
    assert (gpu.name, gpu.model, gpu.memory_mb, gpu.compute_cap) == ("Quadro RTX 8000", None, 46080, "7.5")


@pytest.mark.parametrize("proc, sys_file, expected", [
    ("535.183.01.txt", None, "535.183.01"),
    ("470.256.02.txt", None, "470.256.02"),
    ("560.35.03-open.txt", None, "560.35.03"),  # the open kernel module words it differently
    (None, "550.90.07.txt", "550.90.07"),
    (None, None, None),
])
def test_driver_from_kernel_module_files(tmp_path, proc, sys_file, expected):
    proc_path = NVIDIA / "proc" / proc if proc else tmp_path / "missing"
    sys_path = NVIDIA / "sys" / sys_file if sys_file else tmp_path / "missing"
    assert detect.driver_from_files(proc_path=proc_path, sys_path=sys_path) == expected


def test_smi_csv_with_not_available_fields():
    (gpu,) = detect.parse_smi_csv("NVIDIA A100-SXM4-80GB, [N/A], [N/A], [Not Supported]\n")
    assert (gpu.model, gpu.memory_mb, gpu.driver, gpu.compute_cap) == ("a100", None, None, "8.0")
    assert detect.parse_smi_csv("\n\ngarbage without commas\n") == []


@pytest.mark.parametrize("driver, sm, compat, expected", [
    ("535.183.01", None, False, "12.1"),
    ("550.90.07", None, False, "12.4"),
    ("560.35.03", None, False, "12.6"),
    ("570.86.15", None, False, "12.8"),
    ("580.65.06", None, False, "13.0"),
    ("580.65.06", "3.7", False, "11.8"),  # a K80 stops at the newest CUDA that still builds for it
    ("520.61.05", None, False, "11.8"),
    ("470.256.02", None, False, None),
    ("470.256.02", None, True, "11.8"),
    ("525.60.13", None, True, "12.8"),
    (None, None, False, None),
])
def test_cuda_for_driver(driver, sm, compat, expected):
    assert detect.cuda_for_driver(driver, sm=sm, compat=compat) == expected


@pytest.mark.parametrize("system, machine, expected", [
    ("Linux", "x86_64", "linux/x86_64"),
    ("Linux", "aarch64", "linux/aarch64"),
    ("Linux", "arm64", "linux/aarch64"),
    ("Darwin", "arm64", "macos/arm64"),
    ("Darwin", "x86_64", "macos/x86_64"),
    ("Windows", "AMD64", "windows/x86_64"),
    ("Linux", "ppc64le", None),
    ("FreeBSD", "amd64", None),
])
def test_platform_names(system, machine, expected):
    assert detect.platform_name(system, machine) == expected


def test_this_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", gpu_env(tmp_path, None)["PATH"])
    machine = detect.detect_machine()
    assert machine.platform == detect.platform_name()
    assert machine.python == "{}.{}.{}".format(*sys.version_info[:3])
    assert machine.python_minor == "{}.{}".format(*sys.version_info[:2])
    assert machine.cpus >= 1 and (machine.ram_gb is None or machine.ram_gb >= 1)
    assert machine.gpus == []
    assert detect.python_version(sys.executable) == machine.python


def test_machine_with_recorded_gpus(tmp_path, monkeypatch):
    env = gpu_env(tmp_path, "a10g")
    machine = detect.detect_machine(env=env)
    assert [g.model for g in machine.gpus] == ["a10g"] and machine.driver == "535.183.01"


def _fake_dist(site: Path, version: str) -> None:
    info = site / f"torch-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n")


@pytest.mark.parametrize("version, cuda", [("2.5.1+cu124", "12.4"), ("2.1.2+cu118", "11.8"),
                                           ("2.5.1+cpu", None), ("2.5.1", None)])
def test_torch_build_of_an_interpreter_reads_metadata(tmp_path, monkeypatch, version, cuda):
    _fake_dist(tmp_path / "site", version)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    build = detect.torch_build(sys.executable)
    assert build == detect.TorchBuild(version=version, cuda=cuda)


def test_torch_absent_in_a_fresh_venv(tmp_path):
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True)
    assert detect.torch_build(tmp_path / "venv" / "bin" / "python") is None


def test_broken_interpreter_is_a_clear_error(tmp_path):
    from mlenv.errors import ToolMissingError

    with pytest.raises(ToolMissingError, match="cannot run Python interpreter"):
        detect.torch_build(tmp_path / "no-python")


@pytest.mark.parametrize("local, cuda", [("cu124", "12.4"), ("cu118", "11.8"), ("cu130", "13.0"),
                                         ("cu92", "9.2"), ("cpu", None), ("rocm6.1", None), (None, None)])
def test_cuda_from_local_version(local, cuda):
    assert detect.cuda_from_local_version(local) == cuda

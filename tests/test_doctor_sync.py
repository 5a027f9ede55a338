"""`mlenv sync` builds real venvs from the lock; `mlenv doctor` proves them (and finds drift)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_mlenv

TARGETS = (
    '[targets.cpu]\nplatform = "linux/x86_64"\n\n'
    '[targets.gpu]\nplatform = "linux/x86_64"\ncuda = "12.4"\ngpu = "a10g"\n\n'
    '[targets.mac]\nplatform = "macos/arm64"\n'
)


def fake_nvidia_smi(folder: Path, csv: str | None, *, fail: str | None = None) -> dict:
    """An `nvidia-smi` that prints a recorded answer; returns env with it first on PATH."""
    folder.mkdir(exist_ok=True)
    script = folder / "nvidia-smi"
    if fail:
        script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{fail}\nEOF\nexit 9\n")
    else:
        script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{csv}\nEOF\n")
    script.chmod(0o755)
    return {"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}


@pytest.fixture
def project(tmp_path, spec_file):
    spec_file(tmp_path, targets=TARGETS)
    result = run_mlenv("lock", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return tmp_path


def pip_install(venv: Path, *requirements: str, index_url: str) -> None:
    from uv import find_uv_bin

    subprocess.run([find_uv_bin(), "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"),
                    "--index-url", index_url, *requirements], check=True)


def doctor(project: Path, *args: str, env: dict | None = None):
    return run_mlenv("doctor", *args, cwd=project, env=env)


def test_sync_then_doctor_is_clean(project):
    result = run_mlenv("sync", "--target", "cpu", cwd=project)
    assert result.returncode == 0, result.stderr
    python = project / ".venv" / "bin" / "python"
    out = subprocess.run([python, "-c", "import tinylib, tinydep, devtool; print(tinydep.__version__)"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "1.1"

    clean = doctor(project, "--target", "cpu", "--json")
    assert clean.returncode == 0, clean.stdout
    report = json.loads(clean.stdout)
    assert report["clean"] is True and report["target"] == "cpu" and report["findings"] == []


def test_doctor_finds_another_version_and_extra_packages_and_sync_repairs(project, local_index):
    assert run_mlenv("sync", "--target", "cpu", cwd=project).returncode == 0
    local_index.add("stray", "0.1")
    pip_install(project / ".venv", "tinydep==1.0", "stray", index_url=local_index.url)

    drift = doctor(project, "--target", "cpu", "--json")
    assert drift.returncode == 1
    findings = {(f["check"], f["subject"]): f for f in json.loads(drift.stdout)["findings"]}
    assert findings[("package", "tinydep")]["severity"] == "error"
    assert (findings[("package", "tinydep")]["expected"], findings[("package", "tinydep")]["found"]) == ("1.1", "1.0")
    assert findings[("package", "stray")]["severity"] == "warning"

    table = doctor(project, "--target", "cpu")
    assert "tinydep" in table.stdout and "drift" in table.stderr

    assert run_mlenv("sync", "--target", "cpu", cwd=project).returncode == 0
    assert doctor(project, "--target", "cpu").returncode == 0


def test_doctor_reports_missing_packages_and_groups(project):
    assert run_mlenv("sync", "--target", "cpu", "--no-groups", cwd=project).returncode == 0
    assert doctor(project, "--target", "cpu").returncode == 0  # groups are optional by default
    result = doctor(project, "--target", "cpu", "--group", "dev", "--json")
    assert result.returncode == 1
    (finding,) = json.loads(result.stdout)["findings"]
    assert (finding["subject"], finding["found"]) == ("devtool", "missing")
    # a package of the main group is always required
    from uv import find_uv_bin

    subprocess.run([find_uv_bin(), "pip", "uninstall", "--quiet", "--python", str(project / ".venv" / "bin" / "python"),
                    "tinylib"], check=True)
    result = doctor(project, "--target", "cpu", "--json")
    assert result.returncode == 1
    (finding,) = json.loads(result.stdout)["findings"]
    assert (finding["severity"], finding["subject"], finding["found"]) == ("error", "tinylib", "missing")


def test_doctor_checks_another_interpreter_and_the_platform(project, tmp_path):
    other = tmp_path / "other-venv"
    from uv import find_uv_bin

    subprocess.run([find_uv_bin(), "venv", "--quiet", "--python", sys.executable, str(other)], check=True)
    result = doctor(project, "--target", "cpu", "--python", str(other), "--json")
    missing = {f["subject"] for f in json.loads(result.stdout)["findings"] if f["found"] == "missing"}
    assert result.returncode == 1 and missing == {"tinydep", "tinylib"}

    mac = json.loads(doctor(project, "--target", "mac", "--python", str(other), "--json").stdout)
    platform = next(f for f in mac["findings"] if f["check"] == "platform")
    assert (platform["expected"], platform["found"], platform["severity"]) == ("macos/arm64", "linux/x86_64", "error")


def test_drift_says_how_to_repair_the_environment_that_was_checked(project, tmp_path):
    """`mlenv sync` writes ./.venv: the drift line names the fix for the venv the doctor checked."""
    assert run_mlenv("sync", "--target", "cpu", cwd=project).returncode == 0
    # mlenv installed into a venv the user activated (the README's install): doctor checks that venv
    tool = tmp_path / "tool-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tool)], check=True)
    env = {**os.environ, "VIRTUAL_ENV": str(tool), "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
           "COLUMNS": "400"}
    env.pop("MLENV_DEBUG", None)
    own = subprocess.run([tool / "bin" / "python", "-m", "mlenv", "doctor", "--target", "cpu"], cwd=project,
                         env=env, capture_output=True, text=True)
    assert own.returncode == 1 and f"python {tool}/bin/python" in own.stdout
    assert f"this is the venv mlenv itself runs from ({tool})" in own.stderr
    assert "check it with `mlenv doctor --python .venv`" in own.stderr and "fix with `mlenv sync`" not in own.stderr
    assert doctor(project, "--target", "cpu", "--python", ".venv").returncode == 0  # the command the hint gives

    other = tmp_path / "other-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(other)], check=True)
    drifted = doctor(project, "--target", "cpu", "--python", str(other), env={"COLUMNS": "400"})
    assert drifted.returncode == 1 and f"fix with `mlenv sync --venv {other}`" in drifted.stderr
    assert run_mlenv("sync", "--target", "cpu", "--venv", str(other), cwd=project).returncode == 0
    assert doctor(project, "--target", "cpu", "--python", str(other)).returncode == 0


def test_sync_without_the_locked_python_says_how_to_get_one(tmp_path, spec_file):
    spec = spec_file(tmp_path)
    spec.write_text(spec.read_text().replace('python = "3.11"', 'python = "3.11.99"'))  # no such release
    assert run_mlenv("lock", cwd=tmp_path).returncode == 0
    result = run_mlenv("sync", cwd=tmp_path, env={"COLUMNS": "400"})
    assert result.returncode == 6 and "with Python 3.11.99 failed" in result.stderr
    assert "hint: install Python 3.11.99 on this machine" in result.stderr
    assert "download" not in result.stderr  # uv's hint offers a managed Python, which sync never uses
    assert not (tmp_path / ".venv").exists()


def test_sync_refuses_a_stale_lock(project):
    spec = project / "mlenv.toml"
    spec.write_text(spec.read_text().replace('["tinylib"]', '["tinylib", "devtool"]'))
    result = run_mlenv("sync", "--target", "cpu", cwd=project)
    assert result.returncode == 4
    assert "stale" in result.stderr and "mlenv lock" in result.stderr
    assert not (project / ".venv").exists()


def test_sync_checks_hashes(project, local_index):
    """A wheel replaced on the index after locking is refused, not installed."""
    wheel = next(local_index.folder.glob("tinydep-1.1-*.whl"))
    from tests.pkgindex import build_wheel

    wheel.unlink()
    build_wheel(local_index.folder, "tinydep", "1.1", requires=["devtool"])  # same name, other bytes
    result = run_mlenv("sync", "--target", "cpu", cwd=project)
    assert result.returncode != 0
    assert "hash" in result.stderr.lower()


# --- GPU targets, with recorded nvidia-smi answers -----------------------------------------------

A10G_NEW = "NVIDIA A10G, 23028 MiB, 550.90.07, 8.6"
A10G_COMPAT = "NVIDIA A10G, 23028 MiB, 535.183.01, 8.6"
T4_OLD = "Tesla T4, 15360 MiB, 470.256.02, 7.5"


@pytest.fixture
def synced_gpu_project(project):
    assert run_mlenv("sync", "--target", "gpu", cwd=project).returncode == 0
    return project


def gpu_findings(project: Path, env: dict, *args: str) -> tuple[int, dict]:
    result = doctor(project, *args, "--json", env=env)
    report = json.loads(result.stdout)
    return result.returncode, report


def test_doctor_on_a_gpu_machine_picks_the_cuda_target_and_is_clean(synced_gpu_project, tmp_path):
    env = fake_nvidia_smi(tmp_path / "bin", A10G_NEW)
    code, report = gpu_findings(synced_gpu_project, env)
    assert report["target"] == "gpu"
    assert code == 0 and report["findings"] == []
    code, report = gpu_findings(synced_gpu_project, {"PATH": "/usr/bin:/bin"}, "--target", "cpu")
    assert code == 0


def test_doctor_without_a_gpu_fails_a_cuda_target(synced_gpu_project, tmp_path):
    env = fake_nvidia_smi(tmp_path / "bin", None,
                          fail="NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.")
    code, report = gpu_findings(synced_gpu_project, env, "--target", "gpu")
    assert code == 1
    (finding,) = [f for f in report["findings"] if f["check"] == "gpu"]
    assert finding["severity"] == "error" and "couldn't communicate" in finding["message"]


def test_doctor_flags_old_drivers_and_unsupported_gpus(synced_gpu_project, tmp_path):
    env = fake_nvidia_smi(tmp_path / "compat", A10G_COMPAT)
    code, report = gpu_findings(synced_gpu_project, env, "--target", "gpu")
    (driver,) = [f for f in report["findings"] if f["check"] == "driver"]
    assert code == 1 and driver["severity"] == "warning" and "minor-version compatibility" in driver["message"]

    env = fake_nvidia_smi(tmp_path / "old", T4_OLD)
    code, report = gpu_findings(synced_gpu_project, env, "--target", "gpu")
    checks = {f["check"]: f for f in report["findings"]}
    assert code == 1
    assert checks["driver"]["severity"] == "error" and checks["driver"]["found"] == "470.256.02"
    assert checks["gpu"]["expected"] == "a10g" and "Tesla T4" in checks["gpu"]["found"]

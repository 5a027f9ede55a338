"""Detection of the machine mlenv runs on: platform, Python, CPUs, RAM, NVIDIA GPUs and driver.

GPUs are read through ``nvidia-smi`` found on ``PATH`` (the one interface every NVIDIA driver ships),
the driver version falls back to the kernel module's files when ``nvidia-smi`` is missing or broken.
Nothing here raises for "no GPU": that is the normal case on laptops and CI runners.

The public API, used by ``mlenv init`` and ``mlenv doctor``:

    detect_gpus()        -> list[GpuInfo]            ([] when there is no usable NVIDIA GPU)
    probe_gpus()         -> GpuProbe(gpus, driver, error)   the same plus why it found nothing
    driver_version()     -> str | None                e.g. "535.183.01"
    detect_machine()     -> MachineInfo
    torch_build(python)  -> TorchBuild | None         torch as installed in an interpreter
    cuda_for_driver(drv) -> str | None                newest catalog CUDA the driver runs

Tests and unusual systems can point the driver fallback elsewhere with the environment variables
``MLENV_NVIDIA_PROC_VERSION`` and ``MLENV_NVIDIA_SYS_VERSION`` (or the ``proc_path``/``sys_path``
parameters).
"""

from __future__ import annotations

import json
import os
import platform as _platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from packaging.version import InvalidVersion, Version

from mlenv.hardware import catalog

if TYPE_CHECKING:
    from mlenv.execute import Executor

PROC_VERSION = "/proc/driver/nvidia/version"
SYS_VERSION = "/sys/module/nvidia/version"
SMI_QUERY = "name,memory.total,driver_version,compute_cap"
# compute_cap is only queryable from driver ~510 on; older drivers reject the whole query.
SMI_QUERY_OLD = "name,memory.total,driver_version"
SMI_TIMEOUT = 15.0

_DRIVER_IN_PROC = re.compile(r"Kernel Module\s+(?:for\s+\S+\s+)?(\d+\.\d+(?:\.\d+)?)")
_DRIVER = re.compile(r"^\d+\.\d+(?:\.\d+)?$")
_MEMORY = re.compile(r"^(\d+)\s*MiB$")
_CUDA_LOCAL = re.compile(r"^cu(\d{1,2})(\d)$")


@dataclass(frozen=True)
class GpuInfo:
    name: str  # as nvidia-smi prints it: "NVIDIA A10G", "Tesla T4"
    model: str | None  # catalog key ("a10g"), None for a GPU the catalog does not know
    memory_mb: int | None
    driver: str | None
    compute_cap: str | None  # "8.6"; from the catalog when the driver is too old to report it


@dataclass(frozen=True)
class GpuProbe:
    gpus: list[GpuInfo]
    driver: str | None
    error: str | None = None  # why no GPU was found when nvidia-smi exists but failed


@dataclass(frozen=True)
class MachineInfo:
    platform: str | None  # spec platform name ("linux/x86_64"), None when mlenv has no such platform
    system: str  # raw values, for messages: "Linux", "x86_64"
    machine: str
    python: str  # "3.11.9"
    cpus: int
    ram_gb: int | None
    gpus: list[GpuInfo] = field(default_factory=list)
    driver: str | None = None
    gpu_error: str | None = None

    @property
    def python_minor(self) -> str:
        return ".".join(self.python.split(".")[:2])


@dataclass(frozen=True)
class TorchBuild:
    version: str  # "2.5.1+cu124"
    cuda: str | None  # "12.4" for a +cuXXX build, None for CPU/ROCm/plain PyPI builds

    @property
    def local(self) -> str | None:
        return Version(self.version).local


# --- platform, python, cpu, ram ---------------------------------------------------------------------

_SYSTEMS = {"linux": "linux", "darwin": "macos", "windows": "windows"}
_MACHINES = {"x86_64": "x86_64", "amd64": "x86_64", "x64": "x86_64", "aarch64": "aarch64", "arm64": "arm64"}


def platform_name(system: str | None = None, machine: str | None = None) -> str | None:
    """The spec platform for an OS/arch pair (default: this machine), or None when unsupported."""
    from mlenv.hardware.platforms import PLATFORM_ALIASES, PLATFORMS

    system = (system or _platform.system()).lower()
    machine = (machine or _platform.machine()).lower()
    os_name, arch = _SYSTEMS.get(system), _MACHINES.get(machine)
    if not os_name or not arch:
        return None
    if os_name == "linux" and arch == "arm64":
        arch = "aarch64"
    if os_name == "macos" and arch == "aarch64":
        arch = "arm64"
    name = PLATFORM_ALIASES.get(f"{os_name}/{arch}", f"{os_name}/{arch}")
    return name if name in PLATFORMS else None


def python_version(interpreter: str | os.PathLike | None = None) -> str:
    """``major.minor.micro`` of ``interpreter`` (default: the running one)."""
    if interpreter is None:
        return "{}.{}.{}".format(*sys.version_info[:3])
    output = run_python(interpreter, "import sys; print('%d.%d.%d' % sys.version_info[:3])")
    return output.strip()


def cpu_count() -> int:
    # the CPUs this process may use (cgroups/affinity in containers), not the host's total
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def ram_gb() -> int | None:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
    return round(total / 1024**3) if total > 0 else None


# --- NVIDIA ---------------------------------------------------------------------------------------

def _smi_path(env: dict[str, str] | None) -> str | None:
    path = (env if env is not None else os.environ).get("PATH")
    return shutil.which("nvidia-smi", path=path)


def _run_smi(smi: str, query: str, env: dict[str, str] | None) -> tuple[int, str]:
    try:
        result = subprocess.run(
            [smi, f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=SMI_TIMEOUT, env=env,
        )
    except subprocess.TimeoutExpired:
        return -1, f"nvidia-smi did not answer within {SMI_TIMEOUT:.0f}s"
    except OSError as exc:
        return -1, f"nvidia-smi could not run: {exc.strerror or exc}"
    # nvidia-smi prints its failures ("NVIDIA-SMI has failed ...") on stdout
    return result.returncode, result.stdout if result.stdout.strip() else result.stderr


def _field(value: str) -> str | None:
    value = value.strip()
    return None if not value or value.startswith("[") else value  # "[N/A]", "[Not Supported]"


def parse_smi_csv(text: str, fields: int = 4) -> list[GpuInfo]:
    """Parse ``nvidia-smi --query-gpu=name,memory.total,driver_version[,compute_cap]`` CSV rows
    (``fields`` is 4 with compute_cap, 3 without)."""
    gpus = []
    for line in text.splitlines():
        # split from the right: the name is the only field that could ever hold a comma
        parts = [part.strip() for part in line.rsplit(",", fields - 1)]
        if len(parts) != fields:
            continue
        name, memory, driver = parts[0], _field(parts[1]), _field(parts[2])
        compute_cap = _field(parts[3]) if len(parts) > 3 else None
        match = _MEMORY.match(memory or "")
        model = catalog.gpu_model_for_smi_name(name)
        if compute_cap is None and model is not None:
            compute_cap = model.sm
        gpus.append(GpuInfo(
            name=name,
            model=model.name if model else None,
            memory_mb=int(match.group(1)) if match else None,
            driver=driver if driver and _DRIVER.match(driver) else None,
            compute_cap=compute_cap,
        ))
    return gpus


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "no output")


def probe_gpus(*, env: dict[str, str] | None = None, proc_path: str | os.PathLike | None = None,
               sys_path: str | os.PathLike | None = None) -> GpuProbe:
    """Ask nvidia-smi (on ``env['PATH']``, default the process PATH) for the GPUs and the driver."""
    smi = _smi_path(env)
    gpus: list[GpuInfo] = []
    error = None
    if smi:
        gpus, error = _gpus_from_smi(lambda query: _run_smi(smi, query, env))
    driver = next((gpu.driver for gpu in gpus if gpu.driver), None)
    if driver is None:
        driver = driver_from_files(proc_path=proc_path, sys_path=sys_path)
    return GpuProbe(gpus=gpus, driver=driver, error=error)


def probe_gpus_on(executor: Executor) -> GpuProbe:
    """``probe_gpus`` somewhere else (a dev box): its nvidia-smi, its driver files.

    A place that cannot be asked at all is reported as the probe's ``error`` (no GPU seen), the
    same way a broken local nvidia-smi is.
    """
    from mlenv.errors import MlenvError

    def smi(query: str) -> tuple[int, str]:
        try:
            done = executor.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], timeout=SMI_TIMEOUT)
        except MlenvError as exc:
            return -1, exc.message
        return done.returncode, done.text if done.text.strip() else done.error_text

    gpus, error = _gpus_from_smi(smi) if executor.run(["sh", "-c", "command -v nvidia-smi"]).returncode == 0 \
        else ([], None)
    driver = next((gpu.driver for gpu in gpus if gpu.driver), None)
    if driver is None:
        split = "--mlenv-next-file--"
        files = executor.run(["sh", "-c", f"cat {PROC_VERSION}; echo {split}; cat {SYS_VERSION}"])
        proc_text, _, sys_text = files.text.partition(split)
        driver = _driver_from_texts(proc_text, sys_text)
    return GpuProbe(gpus=gpus, driver=driver, error=error)


def _gpus_from_smi(smi) -> tuple[list[GpuInfo], str | None]:
    """Query GPUs through ``smi(query) -> (exit code, output)``, falling back to the old query."""
    fields = 4
    code, output = smi(SMI_QUERY)
    if code != 0 and "compute_cap" in output:
        fields = 3
        code, output = smi(SMI_QUERY_OLD)
    if code != 0:
        return [], _first_line(output)
    gpus = parse_smi_csv(output, fields)
    return gpus, None if gpus else "nvidia-smi lists no GPU"


def detect_gpus(**kwargs) -> list[GpuInfo]:
    """The NVIDIA GPUs of this machine; [] when there is none or the driver does not answer."""
    return probe_gpus(**kwargs).gpus


def driver_from_files(*, proc_path: str | os.PathLike | None = None,
                      sys_path: str | os.PathLike | None = None) -> str | None:
    """The loaded kernel module's version, read from /proc or /sys (works without nvidia-smi)."""
    proc = Path(proc_path or os.environ.get("MLENV_NVIDIA_PROC_VERSION") or PROC_VERSION)
    sys_file = Path(sys_path or os.environ.get("MLENV_NVIDIA_SYS_VERSION") or SYS_VERSION)

    def text(path: Path) -> str:
        try:
            return path.read_text(errors="replace")
        except OSError:
            return ""

    return _driver_from_texts(text(proc), text(sys_file))


def _driver_from_texts(proc_text: str, sys_text: str) -> str | None:
    match = _DRIVER_IN_PROC.search(proc_text)
    if match:
        return match.group(1)
    return sys_text.strip() if _DRIVER.match(sys_text.strip()) else None


def driver_version(**kwargs) -> str | None:
    """The NVIDIA driver version ("535.183.01"), or None when no driver is loaded."""
    return probe_gpus(**kwargs).driver


def _driver_key(driver: str) -> Version | None:
    try:
        return Version(driver)
    except InvalidVersion:
        return None


def driver_meets(driver: str, minimum: str) -> bool:
    have, need = _driver_key(driver), _driver_key(minimum)
    return have is not None and need is not None and have >= need


def cuda_for_driver(driver: str | None, *, sm: str | None = None, compat: bool = False) -> str | None:
    """Newest catalog CUDA whose minimum driver ``driver`` meets (and that builds for ``sm``).

    With ``compat`` the floor is CUDA minor-version compatibility's (``driver-min-compat``).
    """
    if not driver:
        return None
    for version in reversed(catalog.cuda_versions()):
        release = catalog.cuda_release(version)
        floor = release.driver_min_compat if compat else release.driver_min
        if driver_meets(driver, floor) and (sm is None or release.supports_sm(sm)):
            return version
    return None


# --- torch in an interpreter ------------------------------------------------------------------------

def cuda_from_local_version(local: str | None) -> str | None:
    """``cu124`` -> ``12.4``, ``cu118`` -> ``11.8``; None for ``cpu``, ``rocm6.1`` or no local part."""
    match = _CUDA_LOCAL.match(local or "")
    return f"{match.group(1)}.{int(match.group(2))}" if match else None


_TORCH_PROBE = (
    "import importlib.metadata as m, json\n"
    "try:\n    print(json.dumps(m.version('torch')))\n"
    "except m.PackageNotFoundError:\n    print('null')\n"
)


def torch_build(interpreter: str | os.PathLike | None = None) -> TorchBuild | None:
    """torch as installed for ``interpreter`` (default: the running one), read from its metadata.

    torch is never imported: that takes seconds and may fail on a machine without the GPU it was
    built for, while its version (``2.5.1+cu124``) already says which CUDA it wants.
    """
    if interpreter is None:
        import importlib.metadata

        try:
            version = importlib.metadata.version("torch")
        except importlib.metadata.PackageNotFoundError:
            return None
    else:
        try:
            version = json.loads(run_python(interpreter, _TORCH_PROBE))
        except (ValueError, OSError):
            return None
        if not version:
            return None
    try:
        local = Version(version).local
    except InvalidVersion:
        return None
    return TorchBuild(version=version, cuda=cuda_from_local_version(local))


def run_python(interpreter: str | os.PathLike, code: str) -> str:
    """Run ``code`` under another interpreter on this machine and return its stdout."""
    from mlenv.execute import LocalExecutor
    from mlenv.execute import run_python as run_there

    return run_there(LocalExecutor(), code, python=os.fspath(interpreter), timeout=60)


# --- everything -----------------------------------------------------------------------------------

def detect_machine(interpreter: str | os.PathLike | None = None, *, env: dict[str, str] | None = None,
                   proc_path: str | os.PathLike | None = None,
                   sys_path: str | os.PathLike | None = None) -> MachineInfo:
    probe = probe_gpus(env=env, proc_path=proc_path, sys_path=sys_path)
    return MachineInfo(
        platform=platform_name(),
        system=_platform.system(),
        machine=_platform.machine(),
        python=python_version(interpreter),
        cpus=cpu_count(),
        ram_gb=ram_gb(),
        gpus=probe.gpus,
        driver=probe.driver,
        gpu_error=probe.error,
    )

"""Doctor: prove an environment matches a lock target, or list exactly how it drifted.

Facts about an environment come from ``PROBE``, a stdlib-only script run by the environment's own
interpreter — a venv, another Python, a container of an image, later a dev box over SSH — so the
checking logic here is the same everywhere and the environment needs nothing installed.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from mlenv.errors import MlenvError, ToolMissingError, UsageError
from mlenv.lock.model import Lock, LockedTarget
from mlenv.wording import counted

if TYPE_CHECKING:
    from mlenv.execute import Executor

# Runs under any Python 3.8+ with the standard library only; prints one JSON object.
PROBE = r"""
import json, platform, sys
try:
    from importlib import metadata
except ImportError:
    metadata = None
packages, commits, modules = {}, {}, {}
def provided(dist):
    # top-level modules: a module file or a package's __init__ in RECORD (a namespace folder is shared
    # by design); top_level.txt when there is no RECORD.  RECORD is read as text: dist.files builds a
    # path object per file, seconds for a large environment
    record = dist.read_text("RECORD")
    if record is None:
        return sorted(set((dist.read_text("top_level.txt") or "").split()))
    found = set()
    for line in record.splitlines():
        head, _, rest = line.split(",", 1)[0].strip('"').partition("/")
        if rest.endswith((".py", ".so", ".pyd")) and rest.startswith("__init__.") and "/" not in rest:
            found.add(head)
        elif not rest and head.endswith((".py", ".so", ".pyd")):
            found.add(head.split(".")[0])
    return sorted(found)
if metadata is not None:
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            packages[name] = dist.version
            modules[name] = provided(dist)
            try:
                vcs = json.loads(dist.read_text("direct_url.json") or "{}").get("vcs_info") or {}
            except ValueError:
                vcs = {}
            if vcs.get("commit_id"):
                commits[name] = vcs["commit_id"]
print(json.dumps({
    "python": platform.python_version(),
    "executable": sys.executable,
    "system": platform.system(),
    "machine": platform.machine(),
    "packages": packages,
    "commits": commits,
    "modules": modules,
}))
"""

# Installer tooling that venvs and images carry without anyone asking for it.
TOOLING = frozenset({"pip", "setuptools", "wheel", "uv"})

SEVERITIES = ("error", "warning", "info")


@dataclass(frozen=True)
class Facts:
    """What the probe saw in one environment."""

    python: str
    executable: str
    system: str
    machine: str
    packages: dict[str, str]  # canonical name -> version
    where: str  # "python /path/.venv/bin/python", "image repo:tag", ...
    commits: dict[str, str] = field(default_factory=dict)  # canonical name -> git commit it was installed from
    modules: dict[str, list[str]] = field(default_factory=dict)  # canonical name -> top-level modules it installs

    @classmethod
    def from_probe_output(cls, output: str, where: str) -> Facts:
        try:
            data = json.loads(output.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise MlenvError(f"could not read the environment of {where}: "
                             f"unexpected probe output {output[:200]!r}") from None
        packages: dict[str, str] = {canonicalize_name(name): version for name, version in data["packages"].items()}
        commits: dict[str, str] = {canonicalize_name(name): commit for name, commit in data.get("commits", {}).items()}
        modules: dict[str, list[str]] = {canonicalize_name(name): found
                                         for name, found in data.get("modules", {}).items()}
        return cls(data["python"], data["executable"], data["system"], data["machine"], packages, where, commits,
                   modules)


@dataclass(frozen=True)
class Finding:
    severity: str  # "error" | "warning" | "info"
    check: str  # python, platform, package, gpu, driver, compute-capability, lock
    subject: str
    expected: str
    found: str
    message: str


@dataclass
class Report:
    target: str
    where: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not any(f.severity in ("error", "warning") for f in self.findings)

    def to_json(self) -> dict:
        return {
            "target": self.target,
            "environment": self.where,
            "clean": self.clean,
            "findings": [asdict(f) for f in self.findings],
        }


# --- collecting facts ---------------------------------------------------------------------------


def probe(executor: Executor, *, python: str | None = None) -> Facts:
    """Run ``PROBE`` wherever ``executor`` runs (``python`` there, else python/python3 on its PATH)."""
    from mlenv.execute import run_python

    return Facts.from_probe_output(run_python(executor, PROBE, python=python), executor.where)


def probe_interpreter(python: str | os.PathLike) -> Facts:
    """Facts of a local interpreter, or of the venv folder it names."""
    from mlenv.execute import LocalExecutor

    python = str(python)
    candidate = Path(python)
    if candidate.is_dir():  # a venv folder
        python = str(candidate / ("Scripts/python.exe" if os.name == "nt" else "bin/python"))
    return probe(LocalExecutor(where=f"python {python}"), python=python)


def default_interpreter(project_root: Path) -> str:
    """The environment a user means: the active venv, else the project's .venv, else python3."""
    active = os.environ.get("VIRTUAL_ENV")
    if active:
        return str(Path(active) / "bin" / "python")
    project_venv = project_root / ".venv" / "bin" / "python"
    if project_venv.exists():
        return str(project_venv)
    import shutil

    found = shutil.which("python3") or shutil.which("python")
    if not found:
        raise ToolMissingError("no Python interpreter found on PATH", hint="pass one with --python")
    return found


def local_drift_fix(project_root: Path, python: str | None) -> str:
    """How to repair a local environment the doctor found drifted.

    `mlenv sync` only writes the project's .venv by default: when the doctor checked another
    environment (an activated venv, often the one mlenv itself is installed in), saying "run
    `mlenv sync`" sends the user round in circles.
    """
    checked = Path(python or default_interpreter(project_root))
    # a venv folder, or <venv>/bin/python (never resolved: it is a symlink to the base interpreter)
    venv = checked if checked.is_dir() else checked.parent.parent
    if not (venv / "pyvenv.cfg").is_file():
        return (f"{checked} is not a venv, so `mlenv sync` cannot repair it; `mlenv sync` makes ./.venv match "
                f"the lock (check it with `mlenv doctor --python .venv`)")
    if venv.resolve() == (project_root / ".venv").resolve():
        return "fix with `mlenv sync`"
    if venv.resolve() == Path(sys.prefix).resolve():
        return (f"this is the venv mlenv itself runs from ({venv}), not the project's: `mlenv sync` installs "
                f"into ./.venv, check it with `mlenv doctor --python .venv` (or deactivate this venv)")
    return f"fix with `mlenv sync --venv {venv}`"


# --- choosing the target ------------------------------------------------------------------------


def pick_target(lock: Lock, platform: str | None, has_gpu: bool) -> LockedTarget:
    """The lock target that describes this machine: same platform, CUDA if and only if a GPU is here."""
    same_platform = [t for name, t in sorted(lock.targets.items()) if t.platform == platform]
    preferred = [t for t in same_platform if bool(t.cuda) == has_gpu]
    chosen = preferred or same_platform
    if not chosen:
        raise UsageError(
            f"no locked target matches this machine ({platform or 'unknown platform'})",
            hint=f"pick one with --target ({', '.join(sorted(lock.targets))})",
        )
    return chosen[0]


# --- the checks ---------------------------------------------------------------------------------


def check_packages(lock: Lock, target: LockedTarget, facts: Facts, groups: tuple[str, ...] = ()) -> list[Finding]:
    required = {p.name: p for p in lock.packages_for(target.name, groups)}
    allowed = {p.name: p for p in lock.packages_for(target.name)}
    findings = []
    for name, package in sorted(allowed.items()):
        installed = facts.packages.get(name)
        if installed is None:
            if name in required:
                findings.append(Finding("error", "package", name, package.version, "missing",
                                        f"{name} {package.version} is not installed"))
            continue
        if not _same_version(installed, package.version):
            findings.append(Finding("error", "package", name, package.version, installed,
                                    f"{name} is {installed}, the lock pins {package.version}"))
        elif package.vcs and facts.commits.get(name) != package.vcs.commit_id:
            commit = facts.commits.get(name)
            source = f"from commit {commit[:12]}" if commit else "not installed from git"
            findings.append(Finding("error", "package", name, f"commit {package.vcs.short}",
                                    f"commit {commit[:12]}" if commit else "not from git",
                                    f"{name} {installed} is {source}, the lock pins commit {package.vcs.short} of "
                                    f"{package.vcs.url}"))
    for name, version in sorted(facts.packages.items()):
        if name not in allowed and name not in TOOLING:
            findings.append(Finding("warning", "package", name, "not in lock", version,
                                    f"{name} {version} is installed but not locked"))
    return findings


def check_modules(lock: Lock, target: LockedTarget, facts: Facts) -> list[Finding]:
    """Two installed distributions that provide one top-level module (the files of one overwrote the
    other's), read from what is installed: the truthful form of the lock's table-based check."""
    from mlenv.lock.builds import clash_message, installed_clashes

    locked = {p.name for p in lock.packages_for(target.name)}
    return [Finding("error", "module", module, "one distribution", ", ".join(providers),
                    clash_message(module, providers, unlocked=[name for name in providers if name not in locked]))
            for module, providers in installed_clashes(facts.modules)]


def _same_version(installed: str, locked: str) -> bool:
    try:
        return Version(installed) == Version(locked)
    except InvalidVersion:
        return installed == locked


def check_interpreter(lock: Lock, target: LockedTarget, facts: Facts) -> list[Finding]:
    from mlenv.hardware.detect import platform_name

    findings = []
    wanted = lock.python_version
    if not (facts.python == wanted or facts.python.startswith(wanted + ".")):
        findings.append(Finding("error", "python", "python", wanted, facts.python,
                                f"Python {facts.python}, the lock wants {wanted}"))
    platform = platform_name(facts.system, facts.machine)
    if platform != target.platform:
        found = platform or f"{facts.system}/{facts.machine}"
        findings.append(Finding("error", "platform", "platform", target.platform, found,
                                f"running on {found}, target {target.name!r} is {target.platform}"))
    return findings


def check_gpu(target: LockedTarget, probe=None) -> list[Finding]:
    """CUDA targets only: a GPU is there, its driver is new enough, its compute capability supported."""
    if not target.cuda:
        return []
    from mlenv.hardware import detect

    probe = probe or detect.probe_gpus()
    findings = []
    if not probe.gpus:
        reason = probe.error or "nvidia-smi not found"
        return [Finding("error", "gpu", "gpu", f"NVIDIA GPU for CUDA {target.cuda}", "none",
                        f"no NVIDIA GPU found ({reason})")]
    if target.gpu_count and len(probe.gpus) < target.gpu_count:
        findings.append(Finding("warning", "gpu", "gpu-count", str(target.gpu_count), str(len(probe.gpus)),
                                f"{counted(len(probe.gpus), 'GPU')} found, "
                                f"target {target.name!r} expects {target.gpu_count}"))
    if target.gpu and not any(gpu.model == target.gpu for gpu in probe.gpus):
        found = ", ".join(sorted({gpu.name for gpu in probe.gpus}))
        findings.append(Finding("warning", "gpu", "model", target.gpu, found,
                                f"target {target.name!r} is built for {target.gpu}, found {found}"))
    driver, floor = probe.driver, target.driver_min
    if driver is None:
        findings.append(Finding("error", "driver", "driver", f">= {target.driver_min}", "unknown",
                                "could not read the NVIDIA driver version"))
    elif floor is not None:  # a CUDA target's lock records its driver floors
        compat_floor = target.driver_min_compat or floor
        if not detect.driver_meets(driver, compat_floor):
            findings.append(Finding("error", "driver", "driver", f">= {floor}", driver,
                                    f"driver {driver} is too old for CUDA {target.cuda} (needs {floor}, "
                                    f"or at least {compat_floor} with minor-version compatibility)"))
        elif not detect.driver_meets(driver, floor):
            findings.append(Finding("warning", "driver", "driver", f">= {floor}", driver,
                                    f"driver {driver} runs CUDA {target.cuda} only through minor-version "
                                    f"compatibility (no PTX JIT); {floor} or newer runs everything"))
    if target.sm_range:
        low, high = (Version(v) for v in target.sm_range)
        for gpu in probe.gpus:
            if gpu.compute_cap and not low <= Version(gpu.compute_cap) <= high:
                supported = f"{target.sm_range[0]}..{target.sm_range[1]}"
                findings.append(Finding("error", "compute-capability", gpu.name, supported, gpu.compute_cap,
                                        f"{gpu.name} (sm {gpu.compute_cap}) is not supported by CUDA {target.cuda}"))
    return findings


def diagnose(
    lock: Lock,
    target: LockedTarget,
    facts: Facts,
    *,
    groups: tuple[str, ...] = (),
    gpu_probe=None,
    check_hardware: bool = True,
    stale: list | None = None,
) -> Report:
    report = Report(target=target.name, where=facts.where)
    for change in stale or ():
        report.findings.append(Finding("warning", "lock", change.target, "lock matches mlenv.toml", "stale",
                                       f"lock is stale: {change.detail}"))
    report.findings += check_interpreter(lock, target, facts)
    report.findings += check_packages(lock, target, facts, groups)
    report.findings += check_modules(lock, target, facts)
    if check_hardware:
        report.findings += check_gpu(target, gpu_probe)
    elif target.cuda:
        report.findings.append(Finding("info", "gpu", "gpu", "", "not checked",
                                       "GPU checks run where the environment runs, not on an image"))
    order = {severity: rank for rank, severity in enumerate(SEVERITIES)}
    report.findings.sort(key=lambda f: (order[f.severity], f.check, f.subject))
    return report


def run_doctor(
    project_root: Path,
    lock: Lock,
    *,
    target_name: str | None = None,
    python: str | None = None,
    image: str | None = None,
    executor: Executor | None = None,
    groups: tuple[str, ...] = (),
    stale: list | None = None,
) -> Report:
    """Probe the chosen environment and compare it with the chosen lock target.

    ``executor`` is any other place (a box, a running container): its Python, GPUs and driver are
    probed where it runs.  An image has no hardware: its GPU checks are reported as not checked.
    """
    from mlenv.execute import ImageExecutor
    from mlenv.hardware import detect

    if sum(bool(choice) for choice in (python, image, executor)) > 1:
        raise UsageError("choose one of --python, --image and --box")
    gpu_probe = None
    if image:
        executor = ImageExecutor(image)
    if executor is not None:
        facts = probe(executor)
        # an image has no hardware; a box or a running container has its own GPUs and driver
        gpu_probe = None if image else detect.probe_gpus_on(executor)
        has_gpu = bool(gpu_probe and gpu_probe.gpus)
        if target_name:
            target = lock.target(target_name)
        else:
            target = pick_target(lock, detect.platform_name(facts.system, facts.machine), has_gpu=has_gpu)
        return diagnose(lock, target, facts, groups=groups, gpu_probe=gpu_probe, check_hardware=not image, stale=stale)
    facts = probe_interpreter(python or default_interpreter(project_root))
    if target_name:
        target = lock.target(target_name)
    else:
        gpu_probe = detect.probe_gpus()
        target = pick_target(lock, detect.platform_name(facts.system, facts.machine), has_gpu=bool(gpu_probe.gpus))
    return diagnose(lock, target, facts, groups=groups, gpu_probe=gpu_probe, stale=stale)

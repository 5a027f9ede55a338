"""Sweeps in a locked project run in the locked environment, or say why they cannot.

In a project with ``mlenv.lock`` the kernel's interpreter (``argv[0]`` of its kernelspec) is probed
with the doctor's probe and compared with the lock target before any run starts.  When the project
has a synced ``.venv`` (or a venv is active, as in mlenv's images and boxes) and the notebook's
kernel is not installed there, the sweep runs its kernels from that venv instead, through a
kernelspec written to a temporary folder (nothing is written to the user's Jupyter folders).  Drift
stops the sweep with the doctor's findings unless the user allows it; what ran is recorded in
results.json and the report.  Dask workers are checked the same way, each with its own kernelspec.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from mlenv.errors import DriftError, SpecError, SweepError
from mlenv.wording import counted

if TYPE_CHECKING:
    from distributed import Client

    from mlenv.lock.model import Lock
    from mlenv.spec import Spec

Warn = Callable[[str], None]
Project = tuple["Spec", "Lock", bytes]  # a locked project: its spec, its lock and the lock file's bytes


@dataclass
class LockedKernel:
    """The kernel a locked sweep runs, and what it was checked against."""

    kernel: str  # the kernelspec name runs start
    record: dict[str, str]  # for results.json and the report
    jupyter_path: str | None = None  # a temporary kernelspec folder to put first on JUPYTER_PATH
    findings: list[str] = field(default_factory=list)  # drift allowed with --allow-drift

    def activate(self) -> None:
        """Make the temporary kernelspec visible to kernel managers here and in forked workers."""
        if self.jupyter_path:
            current = os.environ.get("JUPYTER_PATH")
            os.environ["JUPYTER_PATH"] = self.jupyter_path + (os.pathsep + current if current else "")

    def cleanup(self) -> None:
        if self.jupyter_path:
            parts = [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p and p != self.jupyter_path]
            if parts:
                os.environ["JUPYTER_PATH"] = os.pathsep.join(parts)
            else:
                os.environ.pop("JUPYTER_PATH", None)
            shutil.rmtree(self.jupyter_path, ignore_errors=True)


def kernel_interpreter(kernel: str) -> tuple[str, Any]:
    """The interpreter a kernelspec starts, as jupyter_client resolves it (``python`` -> this Python)."""
    from jupyter_client.kernelspec import KernelSpecManager

    spec = KernelSpecManager().get_kernel_spec(kernel)
    program = spec.argv[0] if spec.argv else ""
    if program in {"python", f"python{sys.version_info[0]}", f"python{sys.version_info[0]}.{sys.version_info[1]}"}:
        return sys.executable, spec  # jupyter_client's own substitution (KernelManager.format_kernel_cmd)
    if not os.path.isabs(program):
        program = shutil.which(program) or program
    return program, spec


def _project(folder: Path, spec_path: Path | None = None) -> Project | None:
    """The locked project of ``spec_path`` (``--spec``: it must load) or else the one around ``folder``:
    (spec, lock, lock bytes), or None without one."""
    from mlenv.lock.model import lock_path, read_lock
    from mlenv.spec import find_spec, load_spec

    if spec_path is None:
        try:
            spec_path = find_spec(folder)
        except SpecError as exc:
            if "no mlenv.toml" in exc.message:
                return None  # a sweep needs no project
            raise
    spec = load_spec(spec_path)
    path = lock_path(spec.root)
    if not path.exists():
        return None  # not locked yet: nothing to check against
    return spec, read_lock(spec.root), path.read_bytes()


def _in_venv(program: str, resource_dir: str, venv: Path) -> bool:
    venv = Path(os.path.abspath(venv))
    return any(Path(os.path.abspath(place)).is_relative_to(venv) for place in (program, resource_dir) if place)


def _venv_kernelspec(python: Path, name: str, language: str) -> str:
    """A kernelspec for ``python`` in a new temporary folder (for JUPYTER_PATH); mlenv's own package is
    made importable (``mlenv.record`` is standard-library only) without anything else of this tool."""
    folder = Path(tempfile.mkdtemp(prefix="mlenv-sweep-kernels-"))
    shim = folder / "python"
    shim.mkdir()
    (shim / "mlenv").symlink_to(Path(__file__).resolve().parents[1], target_is_directory=True)
    spec_dir = folder / "kernels" / name
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"{name} (mlenv sweep)", "language": language,
        "env": {"PYTHONPATH": str(shim)},
    }))
    return str(folder)


def _findings_text(report) -> list[str]:
    return [f"{finding.severity}: {finding.message}" for finding in report.findings
            if finding.severity in ("error", "warning")]


def lock_record(spec, lock, lock_bytes: bytes, target, facts) -> dict[str, str]:
    import hashlib

    return {"lock": hashlib.sha256(lock_bytes).hexdigest()[:16], "target": target.name,
            "pylock-sha256": target.pylock_sha256[:16], "python": facts.python, "interpreter": facts.executable,
            "project": str(spec.root)}


def check_locked_kernel(folder: Path, kernel: str, language: str, *, allow_drift: bool, warn: Warn,
                        check_local: bool = True,
                        spec_path: Path | None = None) -> tuple[LockedKernel | None, Project | None]:
    """The kernel to run in a locked project (None outside one), checked against the lock.

    The project is ``spec_path``'s (``--spec``), else the one around the notebook's ``folder``.
    ``check_local=False`` (a Dask sweep): only find the project and lock; workers are checked by
    ``check_workers``.  Returns the kernel and the project tuple for that.
    """
    from mlenv.doctor import default_interpreter, diagnose, pick_target, probe
    from mlenv.execute import LocalExecutor
    from mlenv.hardware import detect
    from mlenv.lock import check_lock

    project = _project(folder, spec_path)
    if project is None or not check_local:
        return None, project
    spec, lock, lock_bytes = project
    program, kernelspec = kernel_interpreter(kernel)
    # the environment a user means, as for `mlenv doctor`: an activated venv (a box or an image sets
    # one), else the project's synced .venv
    has_venv = bool(os.environ.get("VIRTUAL_ENV")) or (spec.root / ".venv" / "bin" / "python").exists()
    venv_python = Path(default_interpreter(spec.root)) if has_venv else None
    switch_to = None  # the venv's python, when the kernel's own interpreter is outside the venv
    if venv_python and venv_python.exists() and not _in_venv(program, kernelspec.resource_dir,
                                                             venv_python.parent.parent):
        switch_to = venv_python
        program = str(venv_python)
    chosen = kernel if switch_to is None else "mlenv-venv-" + kernel
    where = f"kernel {chosen} ({program})"
    facts = probe(LocalExecutor(where=where), python=program)
    gpus = detect.probe_gpus()
    target = pick_target(lock, detect.platform_name(facts.system, facts.machine), has_gpu=bool(gpus.gpus))
    stale = check_lock(spec, lock)
    report = diagnose(lock, target, facts, gpu_probe=gpus, stale=stale)
    findings = _findings_text(report)
    if switch_to is not None and "ipykernel" not in facts.packages:
        raise SweepError(f"the project's {switch_to.parent.parent} cannot run notebooks: "
                         "ipykernel is not installed there",
                         hint="add ipykernel to the project's dependencies (or a dependency group), then "
                              "`mlenv lock` and `mlenv sync`")
    if findings and not allow_drift:
        more = f"\n    ... and {len(findings) - 10} more" if len(findings) > 10 else ""
        shown = "\n    ".join(findings[:10]) + more
        raise DriftError(f"the sweep's {where} does not match mlenv.lock target {target.name!r}:\n    {shown}",
                         hint="run `mlenv sync` (the sweep then uses the project's .venv), "
                              "or pass --allow-drift to run anyway (recorded in results.json)")
    jupyter_path = _venv_kernelspec(switch_to, chosen, language) if switch_to is not None else None
    record = lock_record(spec, lock, lock_bytes, target, facts)
    record["kernel"] = chosen
    if findings:
        record["drift"] = f"{counted(len(findings), 'finding')}: " + "; ".join(findings[:5])
        warn(f"running although the kernel does not match mlenv.lock target {target.name!r} (--allow-drift): "
             f"{findings[0]}" + (f" (and {len(findings) - 1} more)" if len(findings) > 1 else ""))
    return LockedKernel(chosen, record, jupyter_path, findings), project


# --- Dask workers ---------------------------------------------------------------------------------

def worker_probe(kernel: str) -> str:
    """On a Dask worker: the doctor's probe of the interpreter its kernelspec ``kernel`` starts."""
    from mlenv.doctor import PROBE
    from mlenv.execute import LocalExecutor, run_python

    program, _ = kernel_interpreter(kernel)
    return run_python(LocalExecutor(), PROBE, python=program)


def check_workers(client: Client, project: Project, kernel: str, *, allow_drift: bool, warn: Warn) -> dict[str, str]:
    """Every worker's kernel interpreter against the lock target; the record of what they run."""
    from mlenv.doctor import Facts, diagnose, pick_target
    from mlenv.hardware import detect
    from mlenv.lock import check_lock

    spec, lock, lock_bytes = project
    try:
        outputs = client.run(worker_probe, kernel)
    except Exception as exc:
        raise SweepError(f"could not probe the Dask workers' kernel {kernel!r}: {type(exc).__name__}: {exc}",
                         hint="the workers need mlenv installed and the notebook's kernel") from None
    stale = check_lock(spec, lock)
    drifted: dict[str, list[str]] = {}
    record: dict[str, str] = {}
    for worker, output in sorted(outputs.items()):
        facts = Facts.from_probe_output(output, f"worker {worker}")
        target = pick_target(lock, detect.platform_name(facts.system, facts.machine), has_gpu=False)
        report = diagnose(lock, target, facts, stale=stale, check_hardware=False)
        findings = _findings_text(report)
        if findings:
            drifted[worker] = findings
        record = lock_record(spec, lock, lock_bytes, target, facts)
    record.pop("interpreter", None)
    record["workers"] = str(len(outputs))
    if drifted and not allow_drift:
        lines = [f"{worker}: {finding}" for worker, findings in drifted.items() for finding in findings[:5]]
        raise DriftError(f"{len(drifted)} of {len(outputs)} Dask workers do not match mlenv.lock target "
                         f"{record.get('target')!r}:\n    " + "\n    ".join(lines[:10]),
                         # mlenv's images carry neither distributed nor a worker-ready mlenv: a kernelspec does it
                         hint="give the workers a kernel of the locked environment: `.venv/bin/python -m ipykernel "
                              "install --prefix DIR --name KERNEL` and JUPYTER_PATH=DIR/share/jupyter for "
                              "`dask worker`; or pass --allow-drift")
    if drifted:
        record["drift"] = f"{len(drifted)} of {counted(len(outputs), 'worker')} drifted"
        warn(f"running on Dask workers that do not match mlenv.lock (--allow-drift): {record['drift']}")
    return record

"""`mlenv sync`: make a local virtualenv match the lock exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mlenv.cli import app, application
from mlenv.wording import counted


@app.command("sync")
def sync_command(
    ctx: typer.Context,
    target: Optional[str] = typer.Option(None, "--target", "-t",
                                         help="Lock target to install (default: picked from this machine)."),
    venv: Path = typer.Option(Path(".venv"), "--venv", help="Virtualenv folder, relative to the project."),
    group: list[str] = typer.Option([], "--group", "-g", help="Install only these dependency groups (default: all)."),
    no_groups: bool = typer.Option(False, "--no-groups", help="Install the main dependencies only."),
    allow_stale: bool = typer.Option(False, "--allow-stale", help="Install even if mlenv.lock is out of date."),
) -> None:
    """Create or update a venv to exactly the lock for the local target (hash-checked)."""
    from mlenv.doctor import diagnose, pick_target, probe_interpreter
    from mlenv.hardware import detect
    from mlenv.sync import sync

    mlenv = application(ctx)
    spec, lock = mlenv.spec, mlenv.lock
    lock.require_groups(group)
    gpu_probe = detect.probe_gpus()
    locked = lock.target(target) if target else pick_target(lock, detect.platform_name(), has_gpu=bool(gpu_probe.gpus))
    from mlenv.lock import install_groups

    groups = () if no_groups else install_groups(lock, locked, tuple(group) or None)
    folder = venv if venv.is_absolute() else spec.root / venv
    interpreter = sync(spec, lock, locked, venv=folder, groups=groups, allow_stale=allow_stale)
    report = diagnose(lock, locked, probe_interpreter(interpreter), groups=tuple(group), gpu_probe=gpu_probe)
    clashes = [finding.message for finding in report.findings if finding.check == "module"]
    if clashes:  # the lock's check knows a table of clashes; the installed files know them all
        from mlenv.errors import LockError

        raise LockError(f"{folder} now matches target {locked.name}, but two distributions in it provide one module:\n"
                        + "\n".join(f"  {message}" for message in clashes),
                        hint="which module wins depends on the install order; fix the lock before using the venv")
    packages = counted(len(lock.packages_for(locked.name, groups)), "package")
    mlenv.success(f"{folder} matches target {locked.name} ({packages})")
    for finding in report.findings:
        if finding.severity != "info":
            mlenv.warn(finding.message)

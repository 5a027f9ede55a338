"""`mlenv doctor`: prove an environment matches the lock, or show how it drifted."""

from __future__ import annotations

from typing import Optional

import typer

from mlenv.cli import app, application
from mlenv.wording import counted


@app.command("doctor", json=True)
def doctor_command(
    ctx: typer.Context,
    target: Optional[str] = typer.Option(None, "--target", "-t",
                                         help="Lock target to check against (default: picked from this machine)."),
    python: Optional[str] = typer.Option(None, "--python",
                                         help="Interpreter or venv folder to check "
                                              "(default: active venv, ./.venv, python3)."),
    image: Optional[str] = typer.Option(None, "--image", help="Check inside a container of this image."),
    box: Optional[str] = typer.Option(None, "--box",
                                      help="Check on this dev box (`mlenv ls`): its environment, GPUs and driver."),
    group: list[str] = typer.Option([], "--group", "-g", help="Also require this dependency group (repeatable)."),
) -> None:
    """Compare an environment with a lock target: Python, platform, packages, GPU, driver."""
    from rich.text import Text

    from mlenv.doctor import run_doctor
    from mlenv.errors import DriftError
    from mlenv.lock import check_lock

    mlenv = application(ctx)
    spec, lock = mlenv.spec, mlenv.lock
    lock.require_groups(group)
    executor = None
    if box:
        from mlenv.cli.boxes import box_executor

        executor, target = box_executor(ctx, box, target)
    if group:
        from mlenv.lock import install_groups

        for locked in ([lock.target(target)] if target else lock.targets.values()):
            install_groups(lock, locked, tuple(group))  # unknown names, two alternatives: usage errors
    report = run_doctor(spec.root, lock, target_name=target, python=python, image=image, executor=executor,
                        groups=tuple(group), stale=check_lock(spec, lock))
    if mlenv.json:
        mlenv.print_json(report.to_json())
    else:
        from rich.table import Table

        mlenv.out.print(Text.assemble("target ", (report.target, "bold"), f" · {report.where}"))
        if report.findings:
            colors = {"error": "red", "warning": "yellow", "info": "dim"}
            table = Table("severity", "check", "subject", "expected", "found", box=None)
            for f in report.findings:
                table.add_row(Text(f.severity, style=colors[f.severity]), Text(f.check), Text(f.subject),
                              Text(f.expected), Text(f.found))
            mlenv.out.print(table)
            for f in report.findings:
                if f.check == "module":  # its fix is not `mlenv sync` alone: say it
                    mlenv.out.print(Text(f"  {f.message}"))
        if report.clean:
            mlenv.success("environment matches the lock")
    if not report.clean:
        if not mlenv.json:
            from mlenv.doctor import local_drift_fix

            problems = sum(f.severity != "info" for f in report.findings)
            if image:
                fix = "rebuild the image with `mlenv build`"
            elif box:
                fix = "fix with `mlenv sync` (or rebuild the image)"
            else:
                fix = local_drift_fix(spec.root, python)
            mlenv.err.print(Text.assemble(("drift:", "red"), f" {counted(problems, 'finding')}; {fix}"))
        raise typer.Exit(DriftError.exit_code)

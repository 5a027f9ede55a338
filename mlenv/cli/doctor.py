"""`mlenv doctor`: prove an environment matches the lock, or show how it drifted."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mlenv.cli import app


@app.command("doctor")
def doctor_command(
    target: Optional[str] = typer.Option(None, "--target", "-t", help="Lock target to check against (default: picked from this machine)."),
    python: Optional[str] = typer.Option(None, "--python", help="Interpreter or venv folder to check (default: active venv, ./.venv, python3)."),
    image: Optional[str] = typer.Option(None, "--image", help="Check inside a container of this image."),
    group: list[str] = typer.Option([], "--group", "-g", help="Also require this dependency group (repeatable)."),
    json_output: bool = typer.Option(False, "--json", help="Machine-readable output."),
    spec_path: Optional[Path] = typer.Option(None, "--spec", help="Path to mlenv.toml (default: search upwards)."),
) -> None:
    """Compare an environment with a lock target: Python, platform, packages, GPU, driver."""
    from mlenv import console
    from mlenv.doctor import run_doctor
    from mlenv.errors import DriftError
    from mlenv.lock import check_lock, read_lock
    from mlenv.spec import load_spec

    spec = load_spec(spec_path)
    lock = read_lock(spec.root)
    report = run_doctor(spec.root, lock, target_name=target, python=python, image=image,
                        groups=tuple(group), stale=check_lock(spec, lock))
    if json_output:
        console.print_json(report.to_json())
    else:
        console.out.print(f"target [bold]{report.target}[/] · {report.where}")
        if report.findings:
            from rich.table import Table

            colors = {"error": "red", "warning": "yellow", "info": "dim"}
            table = Table("severity", "check", "subject", "expected", "found", box=None)
            for f in report.findings:
                table.add_row(f"[{colors[f.severity]}]{f.severity}[/]", f.check, f.subject, f.expected, f.found)
            console.out.print(table)
        if report.clean:
            console.success("environment matches the lock")
    if not report.clean:
        if not json_output:
            problems = sum(f.severity != "info" for f in report.findings)
            console.err.print(f"[red]drift:[/] {problems} finding(s); fix with `mlenv sync` (or rebuild the image)")
        raise typer.Exit(DriftError.exit_code)

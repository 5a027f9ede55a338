"""`mlenv lock`: pin every target of the spec in mlenv.lock and pylock.<target>.toml."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mlenv.cli import app


@app.command("lock")
def lock_command(
    check: bool = typer.Option(False, "--check", help="Only verify the lock is up to date (no network); exit 1 if stale."),
    upgrade: bool = typer.Option(False, "--upgrade", "-U", help="Move every pin to the newest allowed version."),
    upgrade_package: list[str] = typer.Option([], "--upgrade-package", "-P", help="Move the pin of one package (repeatable)."),
    json_output: bool = typer.Option(False, "--json", help="Machine-readable output."),
    spec_path: Optional[Path] = typer.Option(None, "--spec", help="Path to mlenv.toml (default: search upwards)."),
) -> None:
    """Resolve the spec for every target and write the lock files."""
    from mlenv import console
    from mlenv.errors import DriftError, UsageError
    from mlenv.lock import check_lock, lock_project, read_lock
    from mlenv.spec import load_spec

    spec = load_spec(spec_path)
    if check:
        if upgrade or upgrade_package:
            raise UsageError("--check cannot be combined with --upgrade")
        changes = check_lock(spec, read_lock(spec.root))
        if json_output:
            console.print_json({
                "fresh": not changes,
                "changes": [{"target": c.target, "field": c.field, "detail": c.detail} for c in changes],
            })
            if changes:
                raise typer.Exit(DriftError.exit_code)
            return
        if changes:
            targets = sorted({c.target for c in changes})
            details = "\n".join(f"  {c}" for c in changes)
            raise DriftError(f"mlenv.lock is stale for {', '.join(targets)}:\n{details}", hint="run `mlenv lock`")
        console.success(f"mlenv.lock is up to date ({len(spec.targets)} targets)")
        return

    result = lock_project(spec, upgrade=upgrade, upgrade_packages=tuple(upgrade_package))
    if json_output:
        console.print_json({
            "resolved": result.resolved,
            "reused": result.reused,
            "updates": [{"target": t, "package": p, "old": o, "new": n} for t, p, o, n in result.updates],
        })
        return
    from rich.table import Table

    table = Table("target", "platform", "accelerator", "packages", "status", box=None)
    for name, target in sorted(result.lock.targets.items()):
        status = "resolved" if name in result.resolved else "unchanged"
        table.add_row(name, target.platform, target.accelerator, str(len(result.lock.packages_for(name))), status)
    console.out.print(table)
    for target, package, old, new in result.updates:
        if old is None:
            console.out.print(f"  [green]+[/] {target}: {package} {new}")
        elif new is None:
            console.out.print(f"  [red]-[/] {target}: {package} {old}")
        else:
            console.out.print(f"  [yellow]~[/] {target}: {package} {old} -> {new}")
    if result.resolved:
        console.success(f"locked {', '.join(result.resolved)}; mlenv.lock and pylock files written")
    else:
        console.success("mlenv.lock is up to date; nothing to resolve")

"""`mlenv lock`: pin every target of the spec in mlenv.lock and pylock.<target>.toml."""

from __future__ import annotations

import typer

from mlenv.cli import app, application


@app.command("lock", json=True)
def lock_command(
    ctx: typer.Context,
    check: bool = typer.Option(False, "--check",
                               help="Only verify the lock is up to date (no network); exit 1 if stale."),
    upgrade: bool = typer.Option(False, "--upgrade", "-U", help="Move every pin to the newest allowed version."),
    upgrade_package: list[str] = typer.Option([], "--upgrade-package", "-P",
                                              help="Move the pin of one package (repeatable)."),
) -> None:
    """Resolve the spec for every target and write the lock files."""
    from mlenv.errors import DriftError, UsageError
    from mlenv.lock import check_lock, lock_project
    from mlenv.lock.sources import moved_sources

    mlenv = application(ctx)
    spec = mlenv.spec
    if check:
        for message in moved_sources(spec):
            mlenv.warn(message)
        if upgrade or upgrade_package:
            raise UsageError("--check cannot be combined with --upgrade")
        changes = check_lock(spec, mlenv.lock)
        if mlenv.json:
            mlenv.print_json({
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
        mlenv.success(f"mlenv.lock is up to date ({len(spec.targets)} targets)")
        return

    trace = (lambda text: mlenv.err.print(text, markup=False, highlight=False)) if mlenv.debug else None
    result = lock_project(spec, upgrade=upgrade, upgrade_packages=tuple(upgrade_package), warn=mlenv.warn,
                          trace=trace)
    if mlenv.json:
        mlenv.print_json({
            "resolved": result.resolved,
            "reused": result.reused,
            "updates": [{"target": t, "package": p, "old": o, "new": n} for t, p, o, n in result.updates],
        })
        return
    from rich.table import Table
    from rich.text import Text

    table = Table("target", "platform", "accelerator", "packages", "status", box=None)
    for name, target in sorted(result.lock.targets.items()):
        status = "resolved" if name in result.resolved else "unchanged"
        table.add_row(Text(name), target.platform, target.accelerator, str(len(result.lock.packages_for(name))), status)
    mlenv.out.print(table)
    for changed, package, old, new in result.updates:
        if old is None:
            change = Text.assemble("  ", ("+", "green"), f" {changed}: {package} {new}")
        elif new is None:
            change = Text.assemble("  ", ("-", "red"), f" {changed}: {package} {old}")
        else:
            change = Text.assemble("  ", ("~", "yellow"), f" {changed}: {package} {old} -> {new}")
        mlenv.out.print(change)
    if result.resolved:
        mlenv.success(f"locked {', '.join(result.resolved)}; mlenv.lock and pylock files written")
    else:
        mlenv.success("mlenv.lock is up to date; nothing to resolve")

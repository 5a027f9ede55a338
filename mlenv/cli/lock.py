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
    from mlenv.lock_command import run_lock

    code = run_lock(application(ctx), check=check, upgrade=upgrade, upgrade_packages=tuple(upgrade_package))
    if code:
        raise typer.Exit(code)

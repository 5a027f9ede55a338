"""`mlenv code`, `mlenv jupyter`, `mlenv keys ...`, `mlenv ssh-config`: IDEs and keys for dev boxes."""

from __future__ import annotations

import sys

import typer

from mlenv.cli import app

keys_app = typer.Typer(help="This machine's SSH keys and the boxes they open.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def confirm(question: str) -> bool:
    """Ask on the terminal; without one (scripts, CI) the answer is no: pass --yes instead."""
    from rich.markup import escape

    from mlenv import console

    if not sys.stdin.isatty():
        return False
    console.err.print(escape(question))
    return typer.confirm("", default=False, err=True)


@keys_app.command("pin")
def keys_pin(
    name: str = typer.Argument(..., help="The box whose host key to pin again."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Pin without asking (after checking the fingerprint)."),
) -> None:
    """Pin a box's current host key (after it was re-created and you checked the new fingerprint)."""
    from mlenv import connect, console

    key = connect.pin_host_key(name, assume_yes=yes, confirm=confirm)
    console.success(f"pinned {key.type} {key.fingerprint} for mlenv-{name}")


@app.command("ssh-config")
def ssh_config_command(
    name: str | None = typer.Argument(None, help="A registered box to change (with --start-on-connect)."),
    start_on_connect: bool | None = typer.Option(
        None, "--start-on-connect/--direct",
        help="Connect through `mlenv ssh --stdio NAME`, which starts a stopped box first (or connect directly)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the change to ~/.ssh/config; write nothing."),
) -> None:
    """Write mlenv's ssh config (Host mlenv-NAME) and its one Include line in ~/.ssh/config."""
    from rich.markup import escape

    from mlenv import console
    from mlenv.connect import registry, sshconfig
    from mlenv.errors import UsageError

    records = registry.load()
    if name is not None:
        if name not in records:
            raise UsageError(f"no box {name!r} is registered on this machine",
                             hint=f"registered: {', '.join(sorted(records)) or 'none'}; `mlenv up {name}` registers it")
        if start_on_connect is not None:
            records[name].start_on_connect = start_on_connect
    include = sshconfig.ensure_include(dry_run=True)
    if dry_run:
        if include.status == "manual":
            console.warn(escape(include.manual_message))
        print(include.diff or f"{include.path}: already includes {sshconfig.paths.ssh_config()}", end="\n")
        return
    registry.save(records)
    sshconfig.write(records)
    include = sshconfig.ensure_include()
    if include.status == "manual":
        console.warn(include.manual_message)
    elif include.status == "added":
        console.success(f"added `{include.line.strip()}` at the top of {include.path}")
    for box in sorted(records):
        for message in sshconfig.overrides(box):
            console.warn(escape(message))
    console.success(f"{sshconfig.paths.ssh_config()}: {len(records)} box(es)")

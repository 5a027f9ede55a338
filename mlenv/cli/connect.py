"""`mlenv code`, `mlenv jupyter`, `mlenv keys ...`, `mlenv ssh-config`: IDEs and keys for dev boxes."""

from __future__ import annotations

import sys

import typer

from mlenv.cli import Typer, app, application
from mlenv.wording import counted

keys_app = Typer(help="This machine's SSH keys and the boxes they open.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


def confirm(question: str) -> bool:
    """Ask on the terminal; without one (scripts, CI) the answer is no: pass --yes instead."""
    from mlenv import console

    if not sys.stdin.isatty():
        return False
    console.err.print(question, markup=False, highlight=False)
    return typer.confirm("", default=False, err=True)


def _record(name: str):
    from mlenv.connect import registry
    from mlenv.errors import UsageError

    record = registry.get(name)
    if record is None:
        known = ", ".join(sorted(registry.load())) or "none"
        raise UsageError(f"no box {name!r} is registered on this machine",
                         hint=f"registered: {known}; `mlenv up {name}` creates and registers it")
    return record


@app.command("code", spec=False)
def code_command(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Box name."),
    path: str | None = typer.Argument(None, help="Folder on the box to open (default: its work folder)."),
    ide: str = typer.Option("vscode", "--ide", help="vscode, cursor or jetbrains (Gateway)."),
    print_only: bool = typer.Option(False, "--print", help="Only print the link; do not start the IDE."),
) -> None:
    """Open a box in VS Code, Cursor or JetBrains Gateway over SSH (prints the link without the IDE)."""
    from mlenv.connect import ide as ides

    mlenv = application(ctx)
    link = ides.link(_record(name), path, ide)
    used = None if print_only else ides.open_link(link)
    if used:
        mlenv.success(f"opened mlenv-{name} with {used}")
        return
    if not print_only:
        program = {"vscode": "code", "cursor": "cursor"}.get(ide, "JetBrains Gateway")
        click = f", or click {link.click}" if link.click != link.uri else ""
        mlenv.err.print(f"{program} is not installed here: open this link in it (Remote-SSH host mlenv-{name}){click}",
                        markup=False)
    print(link.uri)


@app.command("jupyter", spec=False)
def jupyter_command(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Box name."),
    port: int = typer.Option(0, "--port", min=0, max=65535, help="Local port to forward (default: a free one)."),
    python: str | None = typer.Option(None, "--python", help="Interpreter on the box that has Jupyter "
                                         "(default: `jupyter` on the box's PATH)."),
    no_browser: bool = typer.Option(False, "--no-browser", help="Print the URL only."),
    stop: bool = typer.Option(False, "--stop", help="Stop the Jupyter server mlenv started on the box."),
) -> None:
    """Start (or reuse) Jupyter on a box, bound to 127.0.0.1 with a token, and forward it here."""
    import threading
    import webbrowser

    from mlenv.connect import jupyter
    from mlenv.connect.session import Session

    mlenv = application(ctx)
    record = _record(name)
    with Session(record.endpoint) as ssh:
        if stop:
            if jupyter.stop(ssh):
                mlenv.success(f"stopped the Jupyter server on {name}")
            else:
                mlenv.warn(f"no Jupyter server started by mlenv is running on {name}")
            return
        server = jupyter.ensure(ssh, python=python, workdir=record.workdir, allow_root=record.user == "root",
                                progress=mlenv.status)
        with ssh.forward(server.port, local_port=port) as tunnel:
            url = server.url(tunnel.local_port)
            print(url, flush=True)
            how = "started" if server.started else "reused"
            mlenv.err.print(f"Jupyter on {name} ({how}, box port {server.port}) is forwarded to "
                            f"127.0.0.1:{tunnel.local_port}; Ctrl-C stops the forwarding "
                            f"(`mlenv jupyter {name} --stop` stops the server)", markup=False)
            if not no_browser:
                webbrowser.open(url)
            threading.Event().wait()  # until Ctrl-C / SIGTERM


@keys_app.command("ls", json=True, spec=False)
def keys_ls(ctx: typer.Context) -> None:
    """Which keys open which boxes (this machine's keys are marked)."""
    from rich.table import Table

    from mlenv.connect import boxkeys, keys

    mlenv = application(ctx)
    mine = {key.public.blob: key for key in keys.local_keys()}
    current = keys.local_key()
    found = boxkeys.list_keys()
    if mlenv.json:
        return mlenv.print_json({
            "this_machine": {"name": current.name, "fingerprint": current.fingerprint,
                             "public_key": str(current.public_path)},
            "boxes": [{"box": item.box, "error": item.error,
                       "keys": [{"name": key.key_name or key.comment or None, "type": key.type,
                                 "fingerprint": key.fingerprint, "this_machine": key.blob in mine}
                                for key in item.keys]} for item in found]})
    table = Table("key", "fingerprint", "boxes")
    by_key: dict[tuple[str, str], list[str]] = {}
    for item in found:
        for key in item.keys:
            label = (key.key_name or key.comment or "(no name)") + (" (this machine)" if key.blob in mine else "")
            by_key.setdefault((label, key.fingerprint), []).append(item.box)
    for (label, fingerprint), boxes in sorted(by_key.items()):
        table.add_row(label, fingerprint, ", ".join(boxes))
    mlenv.out.print(table)
    for item in found:
        if item.error:
            mlenv.warn(f"{item.box}: not checked ({item.error})")
    # the file to authorize on a machine for the ssh provider (`ssh-copy-id -i FILE user@host`)
    mlenv.err.print(f"this machine: {current.name} {current.fingerprint}, public key {current.public_path}",
                    markup=False, soft_wrap=True)


@keys_app.command("rotate", spec=False)
def keys_rotate(ctx: typer.Context, name: str = typer.Argument(..., help="Box name.")) -> None:
    """Install a new key for this machine on a box and remove the old one from it."""
    from mlenv.connect import boxkeys

    done = boxkeys.rotate(name)
    application(ctx).success(f"{name}: {done.new.fingerprint} installed and logs in; "
                             f"{done.old.fingerprint} removed from the box")


@keys_app.command("revoke", json=True, spec=False)
def keys_revoke(
    ctx: typer.Context,
    key_name: str = typer.Argument(..., help="The key (laptop) name, as `mlenv keys ls` shows it."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask."),
) -> None:
    """Remove a (lost) machine's key from every box this machine can reach, and from the cloud."""
    from mlenv.connect import boxkeys
    from mlenv.errors import DriftError, UsageError

    mlenv = application(ctx)
    if not yes and not confirm(f"Remove every key named {key_name!r} from all your boxes?"):
        raise UsageError("nothing revoked", hint="pass --yes to revoke without the question")
    result = boxkeys.revoke(key_name, warn=mlenv.warn)
    if mlenv.json:
        mlenv.print_json({"key": key_name, "removed": result.removed, "unreachable": result.unreachable,
                          "cloud": result.cloud})
    else:
        for box, count in sorted(result.removed.items()):
            mlenv.success(f"{box}: removed {counted(count, 'key')} named {key_name}")
        for line in result.cloud:
            mlenv.success(line)
    if result.unreachable:
        for box, why in sorted(result.unreachable.items()):
            mlenv.warn(f"{box}: not revoked ({why})")
        raise DriftError(f"{counted(len(result.unreachable), 'box', 'boxes')} could not be reached: "
                         f"{key_name} may still open them",
                         hint=f"start them and run `mlenv keys revoke {key_name}` again")


@keys_app.command("pin", spec=False)
def keys_pin(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The box whose host key to pin again."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Pin without asking (after checking the fingerprint)."),
) -> None:
    """Pin a box's current host key (after it was re-created and you checked the new fingerprint)."""
    from mlenv import connect

    key = connect.pin_host_key(name, assume_yes=yes, confirm=confirm)
    application(ctx).success(f"pinned {key.type} {key.fingerprint} for mlenv-{name}")


@app.command("ssh-config", spec=False)
def ssh_config_command(
    ctx: typer.Context,
    name: str | None = typer.Argument(None, help="A registered box to change (with --start-on-connect)."),
    start_on_connect: bool | None = typer.Option(
        None, "--start-on-connect/--direct",
        help="Connect through `mlenv ssh --stdio NAME`, which starts a stopped box first (or connect directly)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the change to ~/.ssh/config; write nothing."),
) -> None:
    """Write mlenv's ssh config (Host mlenv-NAME) and its one Include line in ~/.ssh/config."""
    from mlenv.connect import paths, registry, sshconfig

    mlenv = application(ctx)
    records = registry.load()
    if name is not None:
        records[name] = _record(name)
        if start_on_connect is not None:
            records[name].start_on_connect = start_on_connect
    if dry_run:
        include = sshconfig.ensure_include(dry_run=True)
        if include.status == "manual":
            mlenv.warn(include.manual_message)
        print(include.diff or f"{include.path} already includes {paths.ssh_config()}")
        return
    registry.save(records)
    sshconfig.write(records)
    include = sshconfig.ensure_include()
    if include.status == "manual":
        mlenv.warn(include.manual_message)
    elif include.status == "added":
        mlenv.success(f"added `{include.line.strip()}` at the top of {include.path}")
    for box in sorted(records):
        for message in sshconfig.overrides(box):
            mlenv.warn(message)
    mlenv.success(f"{paths.ssh_config()}: {counted(len(records), 'box', 'boxes')}")

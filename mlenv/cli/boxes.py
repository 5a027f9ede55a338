"""`mlenv up | ls | stop | start | down | gc | ssh | logs | keepalive`: dev boxes (mlenv/boxes)."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from mlenv.cli import app, application


def _progress(message: str) -> None:
    """One line per long step on stderr, for people and for logs alike (stdout carries results)."""
    from mlenv import console

    console.err.print(("" if message.startswith(" ") else "• ") + message, markup=False, highlight=False)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _spec(ctx: typer.Context):
    """The project's spec, or None outside a project: listing and removing boxes needs none."""
    from mlenv.errors import SpecError

    mlenv = application(ctx)
    try:
        return mlenv.spec
    except SpecError:
        if mlenv.spec_path is not None:
            raise
        return None


# where stop/start/down/ssh/logs/keepalive/gc look when not told: what _providers returns
PROVIDER_HELP = "Look only with this provider: docker, ssh or aws (default: [devbox] provider, then docker)."


def _providers(spec, requested: Optional[str]) -> list:
    """The providers to look in: the one asked for, else the project's default and docker."""
    from mlenv import boxes

    names = [requested] if requested else list(dict.fromkeys([boxes.default_provider_name(spec), "docker"]))
    return [boxes.provider(name, spec) for name in names]


def _find(name: str, spec, requested: Optional[str]):
    """(provider, box) for a box name, looking in each candidate provider."""
    from mlenv.boxes import validate_box_name
    from mlenv.errors import ToolMissingError, UsageError

    validate_box_name(name)
    unreachable = []
    for provider in _providers(spec, requested):
        try:
            box = provider.get(name)
        except ToolMissingError as exc:
            unreachable.append(f"{provider.name}: {exc.message}")
            continue
        if box is not None:
            return provider, box
    if unreachable and len(unreachable) == len(_providers(spec, requested)):
        raise ToolMissingError(f"cannot look for box {name}: " + "; ".join(unreachable))
    raise UsageError(f"no box named {name!r}", hint="see `mlenv ls`, or create it with `mlenv up " + name + "`")


def box_executor(ctx: typer.Context, name: str, target: Optional[str] = None):
    """(executor, target) of a running box, for commands that run something there (doctor --box).
    The target defaults to the one the box was made for."""
    from mlenv.errors import UsageError

    chosen, box = _find(name, _spec(ctx), None)
    if box.state != "running":
        raise UsageError(f"box {name} is {box.state}", hint=f"start it with `mlenv start {name}`")
    return chosen.executor(box), target or box.target


def _register(box, yes: bool = False) -> None:
    """Pin the box's host key and write its `mlenv-NAME` ssh entry (mlenv.connect)."""
    from mlenv import connect, console
    from mlenv.cli.connect import confirm

    if not box.host_keys and box.extra.get("host_keys_pending"):
        # a cloud box still booting: its keys come from its console, never from trust on first use
        console.warn(f"box {box.name} has not printed its host keys yet; `mlenv up {box.name}` waits for them "
                     f"(`mlenv ssh {box.name}` pins them once it has booted)")
        return
    connect.register(box, assume_yes=yes, confirm=confirm, warn=console.warn)


def _confirm(question: str, yes: bool) -> None:
    from mlenv.errors import UsageError

    if yes:
        return
    if not sys.stdin.isatty():
        raise UsageError(f"{question} needs confirmation", hint="pass --yes")
    if not typer.confirm(question, default=False):
        raise typer.Abort()


@app.command("up")
def up_command(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Box name: lowercase letters, digits and -."),
    provider: Optional[str] = typer.Option(None, "--provider", "-p",
                                           help="docker (default), ssh or aws; default from \\[devbox] provider."),
    target: Optional[str] = typer.Option(None, "--target", "-t",
                                         help="Lock target (default: \\[devbox] target, else the only linux target)."),
    idle: Optional[str] = typer.Option(None, "--idle", help="Stop after this long without activity (default 30m)."),
    idle_connected: Optional[str] = typer.Option(None, "--idle-connected",
                                                 help="... while an SSH/IDE connection is open but nothing happens "
                                                      "(default 3h)."),
    max_lifetime: Optional[str] = typer.Option(None, "--max-lifetime",
                                               help="Stop after this long whatever happens (default 12h)."),
    instance_type: Optional[str] = typer.Option(None, "--instance-type",
                                                help="Cloud instance type "
                                                     "(default: the cheapest that fits the target)."),
    spot: bool = typer.Option(False, "--spot", help="Use a spot instance (aws)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and create nothing."),
    no_wait: bool = typer.Option(False, "--no-wait",
                                 help="aws: return once the instance is launched, without waiting for its host "
                                      "keys and first-boot setup (`mlenv up NAME` waits later). Changes nothing "
                                      "for docker and ssh boxes: they are set up within `up`."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask before creating paid resources."),
    base_image: Optional[str] = typer.Option(None, "--base-image",
                                             help="Image build: base image instead of the official one."),
    network: Optional[str] = typer.Option(None, "--network", help="Image build: network for RUN steps (e.g. host)."),
    build_arg: list[str] = typer.Option([], "--build-arg", help="Image build: KEY=VALUE build argument (repeatable)."),
) -> None:
    """Create a dev box running the locked environment, or start it again (idempotent)."""
    from mlenv import boxes, connect, console
    from mlenv.cli.build import parse_build_args

    spec = application(ctx).spec
    settings = spec.devbox

    def duration(value: Optional[str], configured: Optional[int], key: str, default: int) -> int:
        """--KEY, else [devbox] KEY (already seconds), else the default."""
        given = value if value is not None else configured
        return boxes.parse_duration(given, f"--{key}") if given is not None else default

    build_args = parse_build_args(build_arg)
    build: dict[str, object] = {k: v for k, v in (("base_image", base_image), ("network", network)) if v}
    if build_args:
        build["build_args"] = build_args
    request = boxes.UpRequest(
        name=name,
        target=target,
        idle_s=duration(idle, settings.idle, "idle", boxes.model.DEFAULT_IDLE_S),
        idle_connected_s=duration(idle_connected, settings.idle_connected, "idle-connected",
                                  boxes.model.DEFAULT_IDLE_CONNECTED_S),
        max_lifetime_s=duration(max_lifetime, settings.max_lifetime, "max-lifetime",
                                boxes.model.DEFAULT_MAX_LIFETIME_S),
        instance_type=instance_type or settings.instance_type,
        spot=spot or settings.spot,
        dry_run=dry_run,
        wait=not no_wait,
        assume_yes=yes,
        region=settings.region,
        disk_gb=settings.disk_gb,
        build_options=build,
    )
    chosen = boxes.provider(provider or boxes.default_provider_name(spec), spec)
    if dry_run:
        for line in chosen.plan(request) + connect.plan(name):
            console.out.print(line, markup=False, highlight=False)
        return
    request.authorized_keys = [connect.local_key().public_line]
    if chosen.name != "docker" and chosen.get(name) is None:
        for line in chosen.plan(request):
            console.err.print(f"  {_escape(line)}", highlight=False)
        _confirm(f"create box {name} on {chosen.name}?", yes)
    box = chosen.up(request, _progress)
    if box.extra.get("host_keys_pending"):  # launched with --no-wait
        console.success(f"box {box.name} is launched ({box.provider}): `mlenv up {box.name}` waits for its setup")
        return
    _register(box, yes)
    console.success(f"box {box.name} is {box.state} ({box.provider}): `ssh {connect.alias(box.name)}` "
                    f"or `mlenv ssh {box.name}`")


@app.command("ls", json=True)
def ls_command(
    ctx: typer.Context,
    provider: Optional[str] = typer.Option(None, "--provider", "-p", help="Only this provider's boxes."),
) -> None:
    """List your boxes: state, uptime, cost, idle time and when each stops by itself."""
    import time

    from mlenv import console
    from mlenv.boxes import format_duration
    from mlenv.errors import ToolMissingError

    spec = _spec(ctx)
    found = []
    for chosen in _providers(spec, provider):
        try:
            found += chosen.list()
        except ToolMissingError as exc:
            console.warn(f"{chosen.name} boxes not listed: {exc.message}")
    now = time.time()
    json_output = application(ctx).json
    if json_output:
        console.print_json([box.to_json(now) for box in found])
        return
    if not found:
        console.err.print("no boxes; create one with `mlenv up NAME`")
        return
    from rich.table import Table

    table = Table("name", "provider", "state", "type", "region", "uptime", "$/hour", "cost so far", "idle for",
                  "auto-stop in", box=None)
    for box in found:
        price = "-" if box.price_per_hour is None else f"{box.price_per_hour:.3f}"
        cost = box.cost_so_far(now)
        table.add_row(_escape(box.name), box.provider, box.state, _escape(box.instance_type or "-"),
                      _escape(box.region or "-"), format_duration(box.uptime_s(now)), price,
                      "-" if cost is None else f"{cost:.2f}", format_duration(box.idle_for_s),
                      format_duration(box.stop_due_s))
    # piped output (scripts, logs) gets the whole row instead of an 80-column wrap
    console.out.print(table, width=None if console.out.is_terminal else 200)


@app.command("stop")
def stop_command(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Box name."),
    provider: Optional[str] = typer.Option(None, "--provider", "-p", help=PROVIDER_HELP),
) -> None:
    """Stop a box (its disk/workspace stays; `mlenv start` brings it back)."""
    from mlenv import console

    chosen, box = _find(name, _spec(ctx), provider)
    if box.state == "stopped":
        console.success(f"box {name} is already stopped")
        return
    chosen.stop(name)
    console.success(f"box {name} stopped")


@app.command("start")
def start_command(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Box name."),
    provider: Optional[str] = typer.Option(None, "--provider", "-p", help=PROVIDER_HELP),
) -> None:
    """Start a stopped box (the watchdog's clocks start again)."""
    from mlenv import console

    chosen, _ = _find(name, _spec(ctx), provider)
    box = chosen.start(name, _progress)
    _register(box)
    console.success(f"box {name} is {box.state}")


@app.command("down")
def down_command(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Box name."),
    provider: Optional[str] = typer.Option(None, "--provider", "-p", help=PROVIDER_HELP),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
) -> None:
    """Delete a box and everything made for it (container/instance, workspace volume, keys)."""
    from mlenv import connect, console

    chosen, box = _find(name, _spec(ctx), provider)
    _confirm(f"delete box {name} ({box.provider}) and its workspace?", yes)
    chosen.down(name)
    connect.forget(name)
    console.success(f"box {name} deleted")


@app.command("gc", json=True)
def gc_command(
    ctx: typer.Context,
    provider: Optional[str] = typer.Option(None, "--provider", "-p", help=PROVIDER_HELP),
    yes: bool = typer.Option(False, "--yes", "-y", help="Delete the orphans listed."),
) -> None:
    """List (and with --yes delete) resources mlenv made that belong to no box."""
    from mlenv import console
    from mlenv.errors import ToolMissingError
    from mlenv.wording import counted

    spec = _spec(ctx)
    found = []
    for chosen in _providers(spec, provider):
        try:
            orphans = chosen.orphans()
        except ToolMissingError as exc:
            console.warn(f"{chosen.name} not checked: {exc.message}")
            continue
        found.append((chosen, orphans))
    everything = [orphan for _, orphans in found for orphan in orphans]
    json_output = application(ctx).json
    if json_output:
        console.print_json([orphan.to_json() for orphan in everything])
    elif not everything:
        console.success("no orphaned resources")
    else:
        for orphan in everything:
            price = "" if not orphan.price_per_hour else f"  ${orphan.price_per_hour:.3f}/hour"
            console.out.print(f"{orphan.provider}  {orphan.kind}  {orphan.id}  box={orphan.box or '-'}  "
                              f"{orphan.detail}{price}", markup=False, highlight=False)
    if everything and yes:
        for chosen, orphans in found:
            if orphans:
                chosen.delete_orphans(orphans)
        console.success(f"deleted {counted(len(everything), 'orphaned resource')}")
    elif everything and not json_output:
        console.err.print("delete them with `mlenv gc --yes`")


@app.command("ssh")
def ssh_command(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Box name."),
    command: Optional[list[str]] = typer.Argument(None, help="Command to run on the box (after --)."),
    stdio: bool = typer.Option(False, "--stdio", help="Relay the box's SSH port on stdin/stdout, starting the "
                               "box first when stopped (ssh's ProxyCommand; "
                               "see `mlenv ssh-config --start-on-connect`)."),
    provider: Optional[str] = typer.Option(None, "--provider", "-p", help=PROVIDER_HELP),
) -> None:
    """Open a shell on a box, or run `-- CMD` there (its output and exit code are the command's)."""
    import os
    import shutil
    import subprocess

    from mlenv import connect
    from mlenv.connect import paths, registry
    from mlenv.errors import ToolMissingError

    if stdio:  # ssh's ProxyCommand: stdout is the SSH stream, messages go to stderr
        connect.stdio(name, progress=_progress)
        return
    chosen, box = _find(name, _spec(ctx), provider)
    if box.state != "running":
        box = chosen.start(name, _progress)  # what a user who types `mlenv ssh` wants
        _register(box)
    elif registry.get(name) is None:  # made from another account on this machine, or forgotten
        _register(box)
    if shutil.which("ssh") is None:
        raise ToolMissingError("no ssh client on PATH", hint="install OpenSSH (apt-get install openssh-client)")
    # where the box's environment is, when that is not the login session (aws image boxes: the container)
    remote, terminal = (list(command or []), False)
    if hasattr(chosen, "ssh_command"):
        remote, terminal = chosen.ssh_command(box, command or [])
    # mlenv's own ssh config: the pinned host key and this machine's key, whatever ~/.ssh/config says;
    # `--` ends ssh's options (it reads options after the host too), so no remote word is one of them
    argv = ["ssh", "-F", str(paths.ssh_config()), *(["-t"] if terminal else []), "--", connect.alias(name),
            *remote]
    if not command:
        os.execvp(argv[0], argv)  # an interactive session: ssh takes over this terminal
    raise typer.Exit(subprocess.run(argv).returncode)


@app.command("logs", json=True)
def logs_command(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Box name."),
    tail: int = typer.Option(30, "--tail", "-n", min=0, help="Show the last N decisions (0: all)."),
    provider: Optional[str] = typer.Option(None, "--provider", "-p", help=PROVIDER_HELP),
) -> None:
    """The watchdog's decisions on a box: what it saw at each check, and why it stopped the box."""
    import json

    from mlenv import console
    from mlenv.boxes import WATCHDOG_LOG

    chosen, box = _find(name, _spec(ctx), provider)
    if hasattr(chosen, "watchdog_log"):
        text = chosen.watchdog_log(name)
    else:
        text = chosen.executor(box).run(["cat", WATCHDOG_LOG]).check(f"reading the watchdog log of {name}").text
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:  # a box just made, or a log someone cleared: nothing wrong, nothing to show
        console.err.print(f"the watchdog of box {name} has logged no decisions yet", markup=False, highlight=False)
        return
    if tail:
        lines = lines[-tail:]
    json_output = application(ctx).json
    if json_output:
        sys.stdout.write("".join(line + "\n" for line in lines))
        return
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        console.out.print(_describe(record), markup=False, highlight=False)


def _describe(record: dict) -> str:
    """One watchdog decision as a line for people."""
    import time

    from mlenv.boxes import format_duration

    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.get("t", 0)))
    event = record.get("event", "?")
    if event in ("start", "exit", "error"):
        detail = record.get("settings") or record.get("detail") or ""
        return f"{stamp}  {event:6}  {detail}"
    active = [f"{k}: {v.get('detail', v.get('state'))}" for k, v in (record.get("signals") or {}).items()
              if v.get("state") != "idle"]
    return (f"{stamp}  {event:6}  idle {format_duration(record.get('idle_for_s'))}/"
            f"{format_duration(record.get('limit_s'))}  stop in {format_duration(record.get('stop_due_s'))} "
            f"({record.get('reason')})  " + ("; ".join(active) if active else "nothing active"))


@app.command("keepalive")
def keepalive_command(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Box name."),
    duration: str = typer.Option("2h", "--for", help="How long to keep the box up from now."),
    release: bool = typer.Option(False, "--release", help="Drop the keep-alive instead."),
    provider: Optional[str] = typer.Option(None, "--provider", "-p", help=PROVIDER_HELP),
) -> None:
    """Keep a box up (the watchdog counts it as activity) for a while; max lifetime still applies."""
    import time

    from mlenv import boxes, console

    chosen, box = _find(name, _spec(ctx), provider)
    executor = chosen.executor(box)
    if release:
        boxes.release(executor)
        console.success(f"keep-alive on box {name} released")
        return
    expiry = boxes.hold(executor, boxes.parse_duration(duration, "--for"))
    console.success(f"box {name} stays up until {time.strftime('%H:%M', time.localtime(expiry))} "
                    f"(unless its max lifetime ends first)")

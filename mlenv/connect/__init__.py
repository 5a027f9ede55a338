"""Connect to dev boxes over SSH: pinned host keys, mlenv's ssh config, sessions, IDE links, keys.

What the box providers call:
    register(box, assume_yes=...)  after up/start: pins the host key, writes the ``mlenv-NAME`` entry
    forget(name)                   after down: removes the entry and the pinned key
    wait_for_ssh(box, timeout)     until sshd answers (backoff; exit 6 on timeout)
    endpoint(box)                  where/how mlenv itself logs in (used by ``SSHExecutor``)
    stdio(name)                    ``mlenv ssh --stdio NAME``: start a stopped box, then relay (ProxyCommand)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlenv.connect import hostkeys, registry, session, sshconfig
from mlenv.connect.hostkeys import HostKeyChanged, HostKeyUnknown, alias
from mlenv.connect.keys import LocalKey, PublicKey, local_key, parse_public_key
from mlenv.errors import ExitCode, MlenvError, ToolMissingError

if TYPE_CHECKING:
    from mlenv.boxes.model import Box

__all__ = [
    "HostKeyChanged",
    "HostKeyUnknown",
    "LocalKey",
    "Registration",
    "alias",
    "endpoint",
    "forget",
    "local_key",
    "pin_host_key",
    "plan",
    "register",
    "wait_for_ssh",
]

Confirm = Callable[[str], bool]
Warn = Callable[[str], None]


class HostKeyNotConfirmed(MlenvError):
    exit_code = ExitCode.USAGE

    def __init__(self, name: str, key: PublicKey) -> None:
        super().__init__(f"the host key of box {name!r} ({key.type} {key.fingerprint}) was not confirmed; "
                         "nothing was pinned",
                         hint=f"check the fingerprint on the box's console, then `mlenv keys pin {name} --yes`")


@dataclass
class Registration:
    alias: str
    record: registry.Record
    host_keys: list[PublicKey]
    pinned_by: str  # "provider" (trusted channel) | "confirmed" | "already pinned"
    include: sshconfig.IncludeResult
    warnings: list[str] = field(default_factory=list)


def _trusted_keys(box: Box) -> list[PublicKey]:
    return [parse_public_key(line) for line in box.host_keys]


def _jump(box: Box) -> dict[str, Any]:
    """The jump host a provider reaches the box through (``box.extra["jump"]``: host, port, user and
    its host keys, learned by the provider), or {}."""
    jump = box.extra.get("jump")
    return jump if isinstance(jump, dict) else {}


def _jump_keys(box: Box) -> list[PublicKey]:
    return [parse_public_key(line) for line in _jump(box).get("host_keys") or []]


def _ssh_host(box: Box) -> str:
    if box.ssh_host is None:
        raise ToolMissingError(f"box {box.name!r} has no SSH address ({box.state})",
                               hint=f"`mlenv start {box.name}` starts it; `mlenv ls` shows its state")
    return box.ssh_host


def _record(box: Box, *, start_on_connect: bool | None) -> registry.Record:
    previous = registry.get(box.name)
    identity = previous.identity if previous and Path(previous.identity).is_file() else None
    workdir, authorized_keys = box.extra.get("workdir"), box.extra.get("authorized_keys")
    provided = box.extra.get("identity")  # the key a provider knows this place authorizes
    if identity is None and isinstance(provided, str) and Path(provided).is_file():
        identity = provided
    return registry.Record(
        name=box.name,
        provider=box.provider or "unknown",
        host=_ssh_host(box),
        port=int(box.ssh_port or 22),
        user=box.ssh_user or "root",
        identity=identity or str(local_key().private_path),
        start_on_connect=(previous.start_on_connect if previous else False) if start_on_connect is None
        else start_on_connect,
        workdir=workdir if isinstance(workdir, str) else None,
        authorized_keys=authorized_keys if isinstance(authorized_keys, str) else "~/.ssh/authorized_keys",
        jump_host=_jump(box).get("host"),
        jump_port=_jump(box).get("port"),
        jump_user=_jump(box).get("user"),
        jump_identity=previous.jump_identity if previous and _jump(box) else None,
    )


def endpoint(box: Box) -> tuple[session.Endpoint, list[PublicKey]]:
    """Where mlenv logs in to ``box`` and the keys it may trust before any pin: the registered
    entry (its key, current address) when there is one, else the box's own fields and this
    machine's key."""
    record = _record(box, start_on_connect=None)
    return record.endpoint, _trusted_keys(box)


def open_session(box: Box, *, timeout: float = 20) -> session.Session:
    where, trusted = endpoint(box)
    return session.Session(where, trusted_keys=trusted, jump_trusted_keys=_jump_keys(box), timeout=timeout)


def wait_for_ssh(box: Box, timeout: float = 300, *, progress: Callable[[str], None] | None = None) -> float:
    return session.wait_for_ssh(_ssh_host(box), int(box.ssh_port or 22), timeout=timeout, name=box.name,
                                progress=progress)


def _pin(name: str, host: str, port: int, *, trusted: list[PublicKey], assume_yes: bool,
         confirm: Confirm | None, warn: Warn, timeout: float) -> tuple[list[PublicKey], str]:
    pinned = hostkeys.pinned(name)
    if trusted:
        if pinned and not any(key.same_key(other) for key in pinned for other in trusted):
            warn(f"box {name!r} has new host keys (learned from its provider, a trusted channel): re-pinned")
        if not pinned or {k.line(comment=False) for k in pinned} != {k.line(comment=False) for k in trusted}:
            hostkeys.pin(name, trusted)
            return trusted, "provider"
        return pinned, "already pinned"
    session.wait_for_ssh(host, port, timeout=timeout, name=name)
    offered = session.scan_host_key(host, port)
    if pinned:
        hostkeys.check(name, offered)  # HostKeyChanged: a hard error, never silently re-pinned
        return pinned, "already pinned"
    question = (f"Box {name!r} ({host}:{port}) is new to this machine. Its host key fingerprint is\n"
                f"    {offered.type} {offered.fingerprint}\n"
                "Compare it with the box's console (or its provider) before trusting it. Pin it?")
    if not (assume_yes or (confirm is not None and confirm(question))):
        raise HostKeyNotConfirmed(name, offered)
    hostkeys.pin(name, [offered])
    return [offered], "confirmed"


def register(box: Box, *, assume_yes: bool = False, confirm: Confirm | None = None, warn: Warn | None = None,
             start_on_connect: bool | None = None, timeout: float = 300) -> Registration:
    """Pin ``box``'s host key and write (or update: new address after start) its ``mlenv-NAME``
    entry, and make sure ``~/.ssh/config`` includes mlenv's config.

    Host keys from the provider (``box.host_keys``, a trusted channel) are pinned before any
    connection; otherwise the fingerprint is shown through ``confirm`` (``assume_yes`` skips the
    question, for scripts).  A key different from the pinned one raises ``HostKeyChanged``."""
    warn = warn or (lambda message: None)
    record = _record(box, start_on_connect=start_on_connect)
    jump = record.jump
    if jump is not None:
        # the jump host first: the box's own sshd is only reachable through it, so its key must come
        # from the provider (a trusted channel), never from a scan
        if not _trusted_keys(box):
            raise HostKeyUnknown(record.name)
        _pin(jump.name, jump.host, jump.port, trusted=_jump_keys(box), assume_yes=assume_yes, confirm=confirm,
             warn=warn, timeout=timeout)
    keys, pinned_by = _pin(record.name, record.host, record.port, trusted=_trusted_keys(box),
                           assume_yes=assume_yes, confirm=confirm, warn=warn, timeout=timeout)
    records = registry.load()
    records[record.name] = record
    registry.save(records)
    sshconfig.write(records)
    include = sshconfig.ensure_include()
    warnings = sshconfig.overrides(record.name)
    if include.status == "manual":
        warnings.insert(0, include.manual_message)
    for message in warnings:
        warn(message)
    return Registration(alias(record.name), record, keys, pinned_by, include, warnings)


def plan(name: str) -> list[str]:
    """What registering box ``name`` will change on this machine, for ``up --dry-run``: its entry in
    mlenv's ssh config and the diff of the one line added to ``~/.ssh/config`` (or the by-hand note)."""
    entry = (f"ssh: `Host {alias(name)}` in {registry.paths.ssh_config()} (host key pinned in "
             f"{registry.paths.known_hosts()}, StrictHostKeyChecking yes)")
    lines = [entry]
    include = sshconfig.ensure_include(dry_run=True)
    if include.status == "manual":
        lines.append(include.manual_message)
    elif include.diff:
        lines += include.diff.rstrip("\n").splitlines()
    return lines


def pin_host_key(name: str, *, assume_yes: bool = False, confirm: Confirm | None = None,
                 timeout: float = 60) -> PublicKey:
    """Re-pin a registered box's host key after the user checked it (the way out of ``HostKeyChanged``)."""
    record = registry.get(name)
    if record is None:
        raise MlenvError(f"no box {name!r} is registered on this machine", hint="`mlenv ls` lists your boxes")
    if record.jump is None:
        session.wait_for_ssh(record.host, record.port, timeout=timeout, name=name)
        offered = session.scan_host_key(record.host, record.port)
    else:  # its address is the jump host's view: asked through the jump (its own pinned key)
        with session.Session(record.jump) as via:
            offered = session.scan_host_key(record.host, record.port, via=via)
    old = hostkeys.pinned(name)
    if any(key.same_key(offered) for key in old):
        return offered
    was = ", ".join(key.fingerprint for key in old) or "nothing"
    question = (f"Box {name!r} ({record.host}:{record.port}) now offers the host key\n"
                f"    {offered.type} {offered.fingerprint}\n(pinned so far: {was}). Pin the new key?")
    if not (assume_yes or (confirm is not None and confirm(question))):
        raise HostKeyNotConfirmed(name, offered)
    hostkeys.pin(name, [offered])
    return offered


def forget(name: str) -> bool:
    """Remove box ``name``'s ssh entry and pinned keys (after ``down``); False when it had none."""
    records = registry.load()
    had = records.pop(name, None) is not None
    if had:  # first: a damaged known_hosts (an error below) must not leave an entry for a deleted box
        registry.save(records)
        sshconfig.write(records)
    hostkeys.unpin(name)
    hostkeys.unpin(hostkeys.jump_name(name))
    return had


# --- start on connect ------------------------------------------------------------------------------

def current_box(name: str, *, start: bool = False, progress: Callable[[str], None] | None = None) -> Box:
    """Box ``name`` as its provider sees it now (address after a stop/start), started first when
    ``start`` and it is stopped; the ssh entry follows a changed address."""
    from mlenv import boxes

    record = registry.get(name)
    if record is None:
        raise MlenvError(f"no box {name!r} is registered on this machine",
                         hint=f"`mlenv up {name}` creates and registers it; `mlenv ls` lists your boxes")
    provider = boxes.provider(record.provider)
    box = provider.get(name)
    if box is None or box.state == "terminated":
        raise MlenvError(f"box {name!r} no longer exists ({record.provider})",
                         hint=f"`mlenv up {name}` makes a new one")
    if box.state in ("stopped", "stopping") and start:
        if progress:
            progress(f"box {name} is {box.state}: starting it")
        box = provider.start(name, progress or (lambda message: None))
    if box.state != "running":
        raise MlenvError(f"box {name!r} is {box.state}", hint=f"start it with `mlenv start {name}`")
    if (box.ssh_host, box.ssh_port) != (record.host, record.port):
        register(box, warn=progress)  # pinned key unchanged (it is checked); only the address moves
    return box


def stdio(name: str, *, progress: Callable[[str], None] | None = None, timeout: float = 600) -> None:
    """``mlenv ssh --stdio NAME`` (ssh's ProxyCommand): start the box if it is stopped, wait for its
    sshd, then relay this process's stdin/stdout to it.  Messages go to ``progress`` (stderr):
    stdout belongs to the SSH stream."""
    box = current_box(name, start=True, progress=progress)
    host = _ssh_host(box)
    record = registry.get(name)
    jump = record.jump if record is not None else None
    if jump is None:
        session.wait_for_ssh(host, int(box.ssh_port or 22), timeout=timeout, name=name, progress=progress)
        session.relay_stdio(host, int(box.ssh_port or 22))
        return
    # a box behind a jump host: its provider's start waited for its sshd; relay through the jump session
    with session.Session(jump, trusted_keys=_jump_keys(box)) as via:
        session.relay_stdio(host, int(box.ssh_port or 22), via=via)

"""Which keys open which boxes: list, rotate and revoke this user's keys in boxes' authorized_keys.

Each laptop's key carries its name (``mlenv:<name>``), so a lost laptop is revoked by name from every
box this machine can reach, without knowing its key.  Edits on a box are atomic (temp file + rename,
0600) and keep every line mlenv did not target byte for byte (keys with options, comments).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from mlenv.connect import keys, registry, sshconfig
from mlenv.connect.keys import LocalKey, PublicKey
from mlenv.connect.session import Session
from mlenv.errors import MlenvError, UsageError

_KEY_IN_LINE = re.compile(r"(?:^|\s)(" + "|".join(re.escape(kind) for kind in keys.KEY_TYPES)
                          + r")\s+([A-Za-z0-9+/]+={0,2})(?:\s+(\S+))?")

Warn = Callable[[str], None]


def parse_line(line: str) -> PublicKey | None:
    """The key on an authorized_keys line (options before it allowed), None for comments/blank/unknown."""
    if not line.strip() or line.lstrip().startswith("#"):
        return None
    found = _KEY_IN_LINE.search(line)
    if not found:
        return None
    return PublicKey(found.group(1), found.group(2), found.group(3) or "")


def _remote_path(path: str) -> str:
    return '"$HOME"/' + shlex.quote(path[2:]) if path.startswith("~/") else shlex.quote(path)


def read(ssh: Session, path: str) -> list[str]:
    code, out, err = ssh.capture(f"cat {_remote_path(path)}")
    if code != 0:
        raise MlenvError(f"cannot read {path} on box {ssh.endpoint.name}: {err.decode(errors='replace').strip()}")
    return out.decode("utf-8", "replace").splitlines()


def write(ssh: Session, path: str, lines: list[str]) -> None:
    target = _remote_path(path)
    script = (f"set -e; umask 077; f={target}; d=$(dirname \"$f\"); mkdir -p \"$d\"; "
              "t=$(mktemp \"$d/.mlenv-keys.XXXXXX\"); cat > \"$t\"; chmod 600 \"$t\"; mv -f \"$t\" \"$f\"")
    code, _, err = ssh.capture(script, input="".join(line + "\n" for line in lines).encode())
    if code != 0:
        raise MlenvError(f"cannot update {path} on box {ssh.endpoint.name}: {err.decode(errors='replace').strip()}",
                         hint="the login user must be able to write its authorized_keys file")


@dataclass
class BoxKeys:
    box: str
    keys: list[PublicKey] = field(default_factory=list)
    error: str | None = None  # why the box could not be read (stopped, unreachable, refused)


def _sessions(records: list[registry.Record]):
    for record in records:
        try:
            ssh = Session(record.endpoint, timeout=15)
        except MlenvError as exc:
            yield record, None, exc.message
            continue
        with ssh:
            yield record, ssh, None


def list_keys(names: list[str] | None = None) -> list[BoxKeys]:
    """The keys in each registered box's authorized_keys (or why a box could not be read)."""
    records = registry.load()
    chosen = [records[name] for name in (names or sorted(records)) if name in records]
    found = []
    for record, ssh, error in _sessions(chosen):
        if ssh is None:
            found.append(BoxKeys(record.name, error=error))
            continue
        try:
            found.append(BoxKeys(record.name, [key for key in map(parse_line, read(ssh, record.authorized_keys))
                                               if key is not None]))
        except MlenvError as exc:
            found.append(BoxKeys(record.name, error=exc.message))
    return found


def _cleanup_unused() -> list[LocalKey]:
    """Delete this machine's retired keys that no registered box uses any more."""
    current = keys.local_key().private_path
    records = registry.load().values()
    used = {Path(path) for record in records for path in (record.identity, record.jump_identity) if path} | {current}
    removed = []
    for key in keys.local_keys():
        if key.private_path not in used:
            keys.delete(key)
            removed.append(key)
    return removed


@dataclass
class Rotation:
    box: str
    old: LocalKey
    new: LocalKey


def rotate(name: str) -> Rotation:
    """Give this machine a new key for box ``name``: install it, prove it logs in, then remove the
    old key from the box.  The new key becomes this machine's current key; the old one stays on
    this machine only while other boxes still use it."""
    record = registry.get(name)
    if record is None:
        raise UsageError(f"no box {name!r} is registered on this machine", hint="`mlenv keys ls` lists them")
    old = keys.load(Path(record.identity))
    new = keys.generate(old.name)
    try:
        with Session(record.endpoint) as ssh:
            lines = read(ssh, record.authorized_keys)
            write(ssh, record.authorized_keys, lines + [new.public_line])
        # a jump host (the machine of a container box) keeps authorizing the key it was given
        jump = record.jump
        moved = replace(record, identity=str(new.private_path), jump_identity=str(jump.identity) if jump else None)
        with Session(moved.endpoint) as ssh:  # the new key logs in: only now drop the old one
            lines = read(ssh, record.authorized_keys)
            kept = [line for line in lines if not ((key := parse_line(line)) and key.same_key(old.public))]
            write(ssh, record.authorized_keys, kept)
    except BaseException:
        keys.delete(new)
        raise
    records = registry.load()
    records[name] = moved
    registry.save(records)
    sshconfig.write(records)
    keys.make_current(new)
    _cleanup_unused()
    return Rotation(name, old, new)


@dataclass
class Revocation:
    key_name: str
    removed: dict[str, int] = field(default_factory=dict)  # box -> lines removed
    unreachable: dict[str, str] = field(default_factory=dict)  # box -> why
    cloud: list[str] = field(default_factory=list)  # what provider hooks removed (e.g. AWS key pairs)


def revoke(key_name: str, *, warn: Warn | None = None) -> Revocation:
    """Remove every key named ``key_name`` (a laptop) from every box this machine can reach, and let
    providers that keep copies elsewhere (the AWS key pair) drop theirs."""
    if not keys.KEY_NAME.fullmatch(key_name):
        raise UsageError(f"invalid key name {key_name!r}", hint="`mlenv keys ls` shows the key names")
    if key_name == keys.local_key().name:
        raise UsageError(f"{key_name!r} is this machine's own key: revoking it would lock this machine out",
                         hint="to replace it, use `mlenv keys rotate BOX`; revoke it from another machine")
    result = Revocation(key_name)
    revoked: list[PublicKey] = []
    records = registry.load()
    for record, ssh, error in _sessions([records[name] for name in sorted(records)]):
        if ssh is None:
            result.unreachable[record.name] = error
            continue
        try:
            lines = read(ssh, record.authorized_keys)
            gone = [key for key in map(parse_line, lines) if key is not None and key.key_name == key_name]
            if gone:
                kept = [line for line in lines if not ((key := parse_line(line)) and key.key_name == key_name)]
                write(ssh, record.authorized_keys, kept)
                revoked += gone
            result.removed[record.name] = len(gone)
        except MlenvError as exc:
            result.unreachable[record.name] = exc.message
    result.cloud = _provider_hooks(key_name, revoked, {record.provider for record in records.values()}, warn)
    return result


def _provider_hooks(key_name: str, revoked: list[PublicKey], providers: set[str], warn: Warn | None) -> list[str]:
    """Providers that keep copies of public keys (the AWS key pair) may implement
    ``revoke_key(key_name, public_lines) -> list[str]``; each is asked to drop them."""
    from mlenv import boxes

    done = []
    for name in sorted(providers & set(boxes.PROVIDERS)):
        try:
            hook = getattr(boxes.provider(name), "revoke_key", None)
            if hook is not None:
                done += hook(key_name, [key.line() for key in revoked])
        except MlenvError as exc:
            if warn:
                warn(f"{name}: could not revoke {key_name} there: {exc.message}")
    return done

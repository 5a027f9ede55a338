"""mlenv's ssh config and the one line it adds to the user's ``~/.ssh/config``.

mlenv never edits the user's entries: its blocks live in ``~/.ssh/mlenv/config`` (regenerated from
the registry on every change), and ``~/.ssh/config`` gets a single ``Include`` line at the top, so
mlenv's values are the first ssh reads for ``mlenv-NAME`` and win over later ``Host *`` blocks.
A symlinked (dotfile-managed) or read-only config is left alone: the user gets the line to add.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
import re
import shlex
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from mlenv.connect import paths
from mlenv.connect.hostkeys import alias
from mlenv.connect.registry import Record, check_path
from mlenv.fsutil import atomic_write

HEADER = ("# Written by mlenv: one block per dev box. Do not edit; it is regenerated from\n"
          "# ~/.ssh/mlenv/boxes.json on every `mlenv up/start/down/ssh-config`.\n")
SERVER_ALIVE_INTERVAL = 30
# Options ssh takes from *any* matching block when mlenv's block does not set them, and that change
# where the connection goes or what runs there: a `Host *` setting one of these affects mlenv's boxes.
_ROUTING_OPTIONS = {"proxyjump", "proxycommand", "remotecommand", "requesttty", "knownhostscommand",
                    "localcommand", "permitlocalcommand", "globalknownhostsfile", "verifyhostkeydns"}


def _argument(text: str) -> str:
    """``text`` as one double-quoted ssh_config argument: ssh reads two backslashes there as one, so
    every backslash is doubled (quotes and control characters never get this far: ``check_path``)."""
    return '"' + text.replace("\\", "\\\\") + '"'


def _path_argument(path: str) -> str:
    """A path for IdentityFile and UserKnownHostsFile, which ssh percent-expands (``%d`` is the home
    folder): ``%`` is written ``%%``.  ``${`` cannot be escaped; ``check_path`` refuses it."""
    return _argument(check_path(path, "a path in the ssh config").replace("%", "%%"))


def proxy_command(name: str) -> str:
    """``mlenv ssh --stdio NAME`` with this interpreter, as ssh runs it (``%`` is ssh's token mark)."""
    argv = [sys.executable, "-m", "mlenv", "ssh", "--stdio", name]
    return shlex.join(argv).replace("%", "%%")


def _host_lines(host_alias: str, host: str, port: int, user: str, identity: str) -> list[str]:
    return [
        f"Host {host_alias}",
        f"    HostName {host}",
        f"    Port {port}",
        f"    User {user}",
        f"    IdentityFile {_path_argument(identity)}",
        "    IdentitiesOnly yes",
        f"    HostKeyAlias {host_alias}",
        f"    UserKnownHostsFile {_path_argument(str(paths.known_hosts()))}",
        "    StrictHostKeyChecking yes",
        "    CheckHostIP no",
        "    UpdateHostKeys no",
        f"    ServerAliveInterval {SERVER_ALIVE_INTERVAL}",
        "    ServerAliveCountMax 4",
    ]


def render_block(record: Record) -> str:
    """One ``Host mlenv-NAME`` block (and ``Host mlenv-NAME.jump`` first for a box reached through a
    jump host, each with its own pinned key); every value comes from a validated ``Record``."""
    lines = []
    jump = record.jump
    if jump is not None:
        lines += _host_lines(alias(jump.name), jump.host, jump.port, jump.user, str(jump.identity)) + [""]
    lines += _host_lines(alias(record.name), record.host, record.port, record.user, record.identity)
    if record.start_on_connect:
        lines.append(f"    ProxyCommand {proxy_command(record.name)}")  # it goes through the jump itself
    elif jump is not None:
        lines.append(f"    ProxyJump {alias(jump.name)}")
    return "\n".join(lines) + "\n"


def render(records: dict[str, Record]) -> str:
    return HEADER + "".join("\n" + render_block(records[name]) for name in sorted(records))


def write(records: dict[str, Record]) -> None:
    paths.ensure_private_dir(paths.mlenv_ssh_dir())
    atomic_write(paths.ssh_config(), render(records), private=True)


# --- the Include line in ~/.ssh/config ----------------------------------------------------------------

def _include_pattern(path: str) -> str:
    """The Include argument that matches ``path``: ssh globs it, so glob characters are
    backslash-escaped; OpenSSH 9.9+ also expands ``%`` and ``${`` there and older versions do not,
    so those two are matched by ``?`` (any one character but ``/``) whatever the version."""
    pattern = re.sub(r"([][*?\\])", r"\\\1", check_path(path, "the path of mlenv's ssh config"))
    return re.sub(r"[%$]", "?", pattern)


def include_line() -> str:
    target = str(paths.ssh_config())
    plain = re.fullmatch(r"[\w./+@,:=-]+", target)  # nothing ssh would split, unquote, glob or expand
    return f"Include {target if plain else _argument(_include_pattern(target))}\n"


@dataclass(frozen=True)
class IncludeResult:
    status: str  # "present" | "added" | "would-add" | "manual"
    path: Path
    line: str
    diff: str = ""
    reason: str = ""

    @property
    def manual_message(self) -> str:
        return (f"mlenv did not change {self.path} ({self.reason}). Add this line at its top so "
                f"`ssh mlenv-NAME` works:\n    {self.line.strip()}")


def _words(line: str) -> list[str]:
    try:
        return shlex.split(line.replace("=", " ", 1), comments=True)
    except ValueError:
        return line.split()


def _include_index(lines: list[str]) -> int | None:
    """Index of the line that includes mlenv's config, if any."""
    ours = {str(paths.ssh_config()), "~/.ssh/mlenv/config", "mlenv/config"}
    ours_escaped = include_line().strip()  # a path ssh would glob or expand, as mlenv writes it
    for index, line in enumerate(lines):
        words = _words(line)
        if words and words[0].lower() == "include" and (ours.intersection(words[1:]) or line.strip() == ours_escaped):
            return index
    return None


def _unwritable_reason(path: Path) -> str | None:
    if path.is_symlink():
        return f"it is a symlink to {os.readlink(path)}, managed by something else"
    folder = path.parent
    if path.exists():
        mode = path.stat().st_mode
        if not mode & stat.S_IWUSR or not os.access(path, os.W_OK):
            return "it is read-only"
        if not stat.S_ISREG(mode):
            return "it is not a regular file"
    if folder.exists() and (not folder.stat().st_mode & stat.S_IWUSR or not os.access(folder, os.W_OK)):
        return f"{folder} is read-only"
    return None


def ensure_include(*, dry_run: bool = False) -> IncludeResult:
    """Add mlenv's ``Include`` line at the top of ``~/.ssh/config`` unless it is there already.
    The rest of the file is kept byte for byte; ``dry_run`` only returns the diff."""
    path = paths.user_ssh_config()
    line = include_line()
    try:
        old = path.read_bytes() if path.exists() else b""  # through a symlink too: it may include us already
    except OSError as exc:
        return IncludeResult("manual", path, line, reason=f"it cannot be read: {exc.strerror}")
    if _include_index(old.decode("utf-8", "replace").splitlines()) is not None:
        return IncludeResult("present", path, line)
    new = line.encode() + old
    diff = "".join(difflib.unified_diff(old.decode("utf-8", "replace").splitlines(keepends=True),
                                        new.decode("utf-8", "replace").splitlines(keepends=True),
                                        fromfile=str(path), tofile=f"{path} (with mlenv's Include)"))
    reason = _unwritable_reason(path)
    if reason:
        return IncludeResult("manual", path, line, diff=diff, reason=reason)
    if dry_run:
        return IncludeResult("would-add", path, line, diff=diff)
    paths.ensure_private_dir(path.parent)
    atomic_write(path, new, private=not path.exists())  # an existing file keeps its mode
    return IncludeResult("added", path, line, diff=diff)


# --- what in the user's config would override mlenv's blocks --------------------------------------------

def _host_applies(patterns: list[str], host: str) -> bool:
    """ssh's Host matching: any pattern matches and no negated one does (case-insensitive)."""
    matched = False
    for pattern in patterns:
        for part in pattern.split(","):
            negated = part.startswith("!")
            if fnmatch.fnmatchcase(host.lower(), part.lstrip("!").lower()):
                if negated:
                    return False
                matched = True
    return matched


def _match_may_apply(criteria: list[str], host: str) -> bool:
    """A ``Match`` line that may apply to ``host``: only ``originalhost`` (the alias) is decided
    here; anything else (host after HostName, exec, user, all, ...) may apply, so it counts."""
    pairs = criteria[:]
    index = 0
    while index < len(pairs):
        keyword = pairs[index].lower()
        if keyword == "originalhost" and index + 1 < len(pairs):
            if not _host_applies([pairs[index + 1]], host):
                return False
            index += 2
        elif keyword in ("all", "canonical", "final"):
            index += 1
        else:
            index += 2
    return True


def overrides(name: str) -> list[str]:
    """Warnings for ``Host``/``Match`` blocks of the user's config that change mlenv's settings for
    box ``name``: any block before mlenv's Include line (ssh keeps the first value it reads), and
    blocks anywhere that set routing options mlenv leaves unset (ProxyJump, RemoteCommand, ...)."""
    path = paths.user_ssh_config()
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    include_at = _include_index(lines)
    host = alias(name)
    ours = {"hostname", "port", "user", "identityfile", "identitiesonly", "hostkeyalias", "userknownhostsfile",
            "stricthostkeychecking", "checkhostip", "updatehostkeys", "serveraliveinterval", "serveralivecountmax"}
    warnings = []
    applies, header, header_at = True, "", 0
    for number, line in enumerate(lines, start=1):
        words = _words(line)
        if not words:
            continue
        keyword = words[0].lower()
        if keyword == "host":
            applies, header, header_at = _host_applies(words[1:], host), line.strip(), number
            continue
        if keyword == "match":
            applies, header, header_at = _match_may_apply(words[1:], host), line.strip(), number
            continue
        if not applies or keyword == "include":
            continue
        before_include = include_at is None or number - 1 < include_at
        where = f"{path}:{number}" + (f" (in `{header}` at line {header_at})" if header else "")
        if keyword in ours and before_include:
            warnings.append(f"{where} sets {words[0]} before mlenv's Include line, overriding mlenv's value for "
                            f"{host}: move the Include line to the top of the file")
        elif keyword in _ROUTING_OPTIONS:
            warnings.append(f"{where} sets {words[0]} for every host, including {host}: add `Host !mlenv-*` "
                            f"conditions (or `Host * !mlenv-*`) if the boxes should not use it")
    return warnings

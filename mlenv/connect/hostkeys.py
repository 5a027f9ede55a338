"""Pinned host keys: mlenv's own known_hosts, one entry per box under its ``mlenv-NAME`` alias.

Keys are stored under the alias (ssh's ``HostKeyAlias``), not under ``[ip]:port``: a box that comes
back on a new address after stop/start keeps its pinned key, and a different key at any address is
refused.  ``forget`` (on ``down``) removes the entries, so a new box of the same name is pinned anew.
"""

from __future__ import annotations

import shlex

from mlenv.connect import paths
from mlenv.connect.keys import PublicKey, parse_public_key
from mlenv.errors import MlenvError, SpecError, ToolMissingError
from mlenv.fsutil import atomic_write

ALIAS_PREFIX = "mlenv-"


def alias(name: str) -> str:
    return ALIAS_PREFIX + name


def jump_name(name: str) -> str:
    """The name box ``name``'s jump host is pinned and configured under (``mlenv-NAME.jump``): a dot
    cannot be in a box name, so it never clashes with another box."""
    return f"{name}.jump"


class HostKeyChanged(ToolMissingError):
    """The box offered a host key other than the pinned one: mlenv refuses to connect (exit 6)."""

    def __init__(self, name: str, offered: PublicKey, pinned: list[PublicKey]) -> None:
        pinned_text = ", ".join(f"{key.type} {key.fingerprint}" for key in pinned)
        super().__init__(
            f"the host key of box {name!r} changed: it offered {offered.type} {offered.fingerprint}, "
            f"but mlenv pinned {pinned_text}. Nothing was sent to the box. Either the box was re-created "
            "outside mlenv (or its host keys regenerated), or someone is intercepting the connection.",
            hint=f"if you re-created the box yourself, check the new fingerprint on its console, then re-pin it "
                 f"with `mlenv keys pin {name}`; otherwise do not connect",
        )
        self.offered = offered


class HostKeyUnknown(ToolMissingError):
    """No key is pinned for the box and none came through a trusted channel."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no host key is pinned for box {name!r}, so mlenv will not connect to it",
                         hint=f"pin it with `mlenv keys pin {name}` (shows the fingerprint to confirm)")


def _read() -> list[str]:
    path = paths.known_hosts()
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []
    except UnicodeDecodeError:  # pins are ASCII: the file was damaged (a copy, an editor), not edited
        aside = f"mv {shlex.quote(str(path))} {shlex.quote(f'{path}.bad')}"
        raise SpecError(f"{path} is corrupt (not UTF-8 text); it holds the host keys mlenv pinned for your boxes",
                        hint=f"move it aside (`{aside}`), then `mlenv keys pin NAME` for each box shows its "
                             "key to compare with the box's console and pins it again") from None


def pinned(name: str) -> list[PublicKey]:
    """The keys pinned for box ``name`` (empty when none)."""
    found = []
    for line in _read():
        host, _, rest = line.partition(" ")
        if host == alias(name) and rest:
            try:
                found.append(parse_public_key(rest))
            except MlenvError:
                continue  # a damaged line pins nothing; `pin` rewrites it
    return found


def pin(name: str, keys: list[PublicKey]) -> None:
    """Make ``keys`` the only pinned keys of box ``name``."""
    lines = [line for line in _read() if line.partition(" ")[0] != alias(name)]
    lines += [f"{alias(name)} {key.line(comment=False)}" for key in keys]
    paths.ensure_private_dir(paths.mlenv_ssh_dir())
    atomic_write(paths.known_hosts(), "".join(line + "\n" for line in lines), private=True)


def unpin(name: str) -> None:
    if paths.known_hosts().exists() and pinned(name):
        pin(name, [])


def check(name: str, offered: PublicKey) -> None:
    """Raise ``HostKeyChanged`` unless ``offered`` is one of the pinned keys (``HostKeyUnknown`` if none)."""
    keys = pinned(name)
    if not keys:
        raise HostKeyUnknown(name)
    if not any(key.same_key(offered) for key in keys):
        raise HostKeyChanged(name, offered, keys)

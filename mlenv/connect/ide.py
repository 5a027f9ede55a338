"""IDE links for a registered box: VS Code / Cursor Remote-SSH and JetBrains Gateway.

The links name the ``mlenv-NAME`` host of mlenv's ssh config, so the IDE connects through the
user's own OpenSSH with mlenv's pinned host key and strict checking (and, with start-on-connect,
through ``mlenv ssh --stdio``, which starts a stopped box first).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from mlenv.connect.hostkeys import alias
from mlenv.connect.registry import Record, check_path
from mlenv.errors import UsageError

IDES = ("vscode", "cursor", "jetbrains")
# the CLI each IDE installs; both editors take the same Remote-SSH folder URI
_CLI = {"vscode": "code", "cursor": "cursor"}


@dataclass(frozen=True)
class Link:
    ide: str
    uri: str  # what the IDE's CLI opens (vscode-remote://..., jetbrains-gateway://...)
    click: str  # the same as a link a browser or terminal hands to the IDE (vscode://..., cursor://...)
    argv: list[str] | None  # the IDE CLI call, None when there is no CLI for it


def default_path(record: Record) -> str:
    if record.workdir:
        return record.workdir
    return "/root" if record.user == "root" else f"/home/{record.user}"


def link(record: Record, path: str | None = None, ide: str = "vscode") -> Link:
    """The link that opens ``path`` (absolute, on the box) of box ``record`` in ``ide``."""
    if ide not in IDES:
        raise UsageError(f"unknown IDE {ide!r}", hint=f"one of: {', '.join(IDES)}")
    folder = check_path(path or default_path(record), "the folder to open")
    host = alias(record.name)
    if ide == "jetbrains":
        query = urlencode({"type": "ssh", "deploy": "false", "host": host, "port": record.port,
                           "user": record.user, "projectPath": folder})
        uri = f"jetbrains-gateway://connect#{query}"
        return Link(ide, uri, uri, None)
    uri = f"vscode-remote://ssh-remote+{host}{quote(folder)}"
    scheme = "vscode" if ide == "vscode" else "cursor"
    return Link(ide, uri, f"{scheme}://vscode-remote/ssh-remote+{host}{quote(folder)}",
                [_CLI[ide], "--folder-uri", uri])


def opener() -> list[str] | None:
    """The desktop's "open this URL" command, if this machine has one."""
    command = {"darwin": "open", "win32": "explorer"}.get(sys.platform, "xdg-open")
    return [command] if shutil.which(command) else None


def open_link(target: Link) -> str | None:
    """Open the link in the IDE; returns the program used, or None when none is installed (then
    the caller prints the link)."""
    if target.argv and shutil.which(target.argv[0]):
        subprocess.run(target.argv, check=False)
        return target.argv[0]
    command = opener() if target.ide == "jetbrains" else None
    if command:
        subprocess.run([*command, target.click], check=False)
        return command[0]
    return None

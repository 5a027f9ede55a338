"""How this machine reaches a box over SSH: the login key, the box's pinned host key, the ssh argv.

``mlenv.connect`` owns this (this machine's key, ssh config entries ``mlenv-NAME``, host-key
pinning).  Until it is installed, a minimal stand-in keeps boxes usable and just as strict: an
ed25519 key in mlenv's data folder, and a known_hosts file per box holding the host key read
through the engine (a trusted channel), with ``StrictHostKeyChecking yes``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlenv.boxes.model import Box


def _connect():
    """``mlenv.connect`` when it is there, else None."""
    try:
        import mlenv.connect as connect
        from mlenv.connect.keys import local_key  # noqa: F401 - the part boxes rely on
    except ImportError:
        return None
    return connect


def data_dir() -> Path:
    home = os.environ.get("MLENV_HOME")
    if home:
        return Path(home)
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "mlenv"


def _interim_key() -> tuple[Path, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from mlenv.fsutil import atomic_write

    private = data_dir() / "boxes" / "id_ed25519"
    public = private.with_suffix(".pub")
    if not (private.is_file() and public.is_file()):
        key = Ed25519PrivateKey.generate()
        atomic_write(private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                serialization.NoEncryption()), mode=0o600)
        line = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        atomic_write(public, line + b" mlenv\n", mode=0o644)
    return private, public.read_text().strip()


def local_public_key() -> str:
    """The public key line of this machine's key, for the box's authorized_keys."""
    connect = _connect()
    if connect is not None:
        from mlenv.connect.keys import local_key

        return local_key().public_line
    return _interim_key()[1]


def _known_hosts(name: str) -> Path:
    return data_dir() / "boxes" / f"known_hosts-{name}"


def register(box: Box, *, assume_yes: bool = False) -> None:
    """Pin the box's host key and make it reachable as ``mlenv-NAME`` (after up/start)."""
    connect = _connect()
    if connect is not None:
        connect.register(box, assume_yes=assume_yes)
        return
    from mlenv.errors import MlenvError
    from mlenv.fsutil import atomic_write

    if not box.host_keys:
        raise MlenvError(f"box {box.name} did not tell its host key", hint="run `mlenv up` again")
    host = f"[{box.ssh_host}]:{box.ssh_port}" if box.ssh_port != 22 else str(box.ssh_host)
    atomic_write(_known_hosts(box.name), "".join(f"{host} {key}\n" for key in box.host_keys), mode=0o600)


def forget(name: str) -> None:
    """Drop the box's ssh entry and pinned host key (after down)."""
    connect = _connect()
    if connect is not None:
        connect.forget(name)
        return
    _known_hosts(name).unlink(missing_ok=True)


def ssh_argv(box: Box, command: list[str], *, tty: bool | None = None) -> list[str]:
    """The user's OpenSSH, logging in to ``box`` with mlenv's key and the pinned host key."""
    connect = _connect()
    options = []
    if tty is True:
        options.append("-tt")
    elif tty is False:
        options.append("-T")
    if connect is not None and hasattr(connect, "ssh_argv"):
        return connect.ssh_argv(box, command, options=options)
    if connect is not None:
        return ["ssh", *options, f"mlenv-{box.name}", *command]
    key, _ = _interim_key()
    return [
        "ssh", *options, "-i", str(key), "-p", str(box.ssh_port), "-o", "IdentitiesOnly=yes",
        "-o", f"UserKnownHostsFile={_known_hosts(box.name)}", "-o", "StrictHostKeyChecking=yes",
        "-o", "BatchMode=yes", "-l", str(box.ssh_user), str(box.ssh_host), *command,
    ]

"""Where mlenv keeps what it needs to connect: its data folder (keys) and its own ssh files.

Everything is derived from the environment at call time (never cached at import), so tests that
point ``HOME`` and ``MLENV_HOME`` at a temporary folder never touch the real ``~/.ssh``.
"""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """mlenv's per-user data folder: ``$MLENV_HOME``, else ``$XDG_DATA_HOME/mlenv``, else
    ``~/.local/share/mlenv``."""
    if os.environ.get("MLENV_HOME"):
        return Path(os.environ["MLENV_HOME"])
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "share"
    return base / "mlenv"


def keys_dir() -> Path:
    return data_dir() / "keys"


def user_ssh_dir() -> Path:
    return Path.home() / ".ssh"


def user_ssh_config() -> Path:
    """The user's own ``~/.ssh/config``: mlenv's only edit there is one ``Include`` line."""
    return user_ssh_dir() / "config"


def mlenv_ssh_dir() -> Path:
    return user_ssh_dir() / "mlenv"


def ssh_config() -> Path:
    """mlenv's ssh config: one ``Host mlenv-NAME`` block per registered box (regenerated, never edited)."""
    return mlenv_ssh_dir() / "config"


def known_hosts() -> Path:
    """mlenv's known_hosts: the pinned host keys of its boxes, under their ``mlenv-NAME`` alias."""
    return mlenv_ssh_dir() / "known_hosts"


def registry() -> Path:
    """The validated values the ssh config is rendered from (one record per box)."""
    return mlenv_ssh_dir() / "boxes.json"


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) readable by the owner only, as ssh expects of ~/.ssh."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path

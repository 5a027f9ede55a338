"""Sync: make a local virtualenv exactly match one lock target.

uv creates the venv and installs from the target's ``pylock.<target>.toml`` — hashes are always
checked, and packages the lock does not list are removed, so after a sync ``mlenv doctor`` is clean.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from mlenv.errors import LockError, ToolMissingError
from mlenv.lock import check_lock
from mlenv.lock.model import Lock, LockedTarget
from mlenv.lock.resolve import uv_binary
from mlenv.spec import Spec


def _uv(args: list[str], what: str) -> None:
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("VIRTUAL_ENV", None)
    result = subprocess.run([uv_binary(), *args], capture_output=True, text=True, env=env)
    if result.returncode != 0:
        detail = " ".join(line.strip() for line in result.stderr.strip().splitlines()[-4:])
        raise ToolMissingError(f"{what} failed: {detail}")


def ensure_venv(venv: Path, python: str) -> Path:
    """Create ``venv`` with the locked Python, or recreate it when it runs another Python."""
    interpreter = venv / "bin" / "python"
    config = venv / "pyvenv.cfg"
    if config.is_file():
        fields = dict(line.split(" = ", 1) for line in config.read_text().splitlines() if " = " in line)
        current = fields.get("version_info") or fields.get("version") or ""
        if current == python or current.startswith(python + "."):
            return interpreter
    # uv must not download a Python: the locked one has to be on this machine (or in the image)
    _uv(["venv", "--quiet", "--clear", "--python", python, "--python-preference", "only-system", str(venv)],
        f"creating {venv} with Python {python} (is Python {python} installed?)")
    return interpreter


def sync(spec: Spec, lock: Lock, target: LockedTarget, *, venv: Path, groups: tuple[str, ...] | None = None,
         allow_stale: bool = False) -> Path:
    """Install ``target`` into ``venv``; ``groups=None`` installs every dependency group."""
    if not allow_stale:
        changes = [c for c in check_lock(spec, lock) if c.target in (target.name, "*")]
        if changes:
            raise LockError(
                f"mlenv.lock is stale for {target.name}: {changes[0].detail}"
                + (f" (and {len(changes) - 1} more)" if len(changes) > 1 else ""),
                hint="run `mlenv lock` (or pass --allow-stale)",
            )
    pylock = spec.root / target.pylock_path
    if not pylock.is_file():
        raise LockError(f"{target.pylock_path} is missing", hint="run `mlenv lock`")
    interpreter = ensure_venv(venv, lock.python_version)
    selected = sorted({g for p in lock.packages_for(target.name) for g in p.groups} - {"main"}) if groups is None else groups
    args = ["pip", "sync", "--quiet", "--python", str(interpreter), str(pylock)]
    for group in selected:
        args += ["--group", group]
    _uv(args, f"installing {target.pylock_path} into {venv}")
    return interpreter

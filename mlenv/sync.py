"""Sync: make a local virtualenv exactly match one lock target.

uv creates the venv and installs from the target's ``pylock.<target>.toml`` — hashes are always
checked, and packages the lock does not list are removed, so after a sync ``mlenv doctor`` is clean.
"""

from __future__ import annotations

from pathlib import Path

from mlenv.errors import LockError, ToolMissingError
from mlenv.execute import Executor, LocalExecutor
from mlenv.lock import check_lock
from mlenv.lock.builds import requirements_by_group
from mlenv.lock.model import Lock, LockedTarget
from mlenv.lock.resolve import uv_binary
from mlenv.lock.vcs import git_credentials_env, git_error
from mlenv.spec import Spec, parse_requirement


def _uv(executor: Executor, uv: str, args: list[str], what: str, env: dict[str, str] | None = None,
        hint: str | None = None) -> None:
    # VIRTUAL_ENV of the caller's shell must not redirect uv to another environment
    result = executor.run([uv, *args], env={"NO_COLOR": "1", "VIRTUAL_ENV": "", **(env or {})})
    if result.returncode != 0:
        git = git_error(f"{what} failed", result.error_text)
        if git is not None:
            raise git
        lines = [line.strip() for line in result.error_text.strip().splitlines()]
        if hint:  # uv's own hints would contradict ours (it offers downloads mlenv never makes)
            lines = [line.split("hint:", 1)[0].strip() for line in lines if not line.startswith("hint:")]
        detail = " ".join(line for line in lines[-4:] if line)
        raise ToolMissingError(f"{what} failed: {detail}", hint=hint)


def ensure_venv(venv: Path, python: str, *, executor: Executor | None = None, uv: str | None = None) -> Path:
    """Create ``venv`` with the locked Python, or recreate it when it runs another Python."""
    interpreter = venv / "bin" / "python"
    config = venv / "pyvenv.cfg"
    if config.is_file():
        fields = dict(line.split(" = ", 1) for line in config.read_text().splitlines() if " = " in line)
        current = fields.get("version_info") or fields.get("version") or ""
        if current == python or current.startswith(python + "."):
            return interpreter
    # uv must not download a Python: the locked one has to be on this machine (or in the image)
    _uv(executor or LocalExecutor(), uv or uv_binary(),
        ["venv", "--quiet", "--clear", "--python", python, "--python-preference", "only-system", str(venv)],
        f"creating {venv} with Python {python}",
        hint=f"install Python {python} on this machine (uv-managed Pythons are not used), or set another "
             "`python` in mlenv.toml and run `mlenv lock`")
    return interpreter


def sync(spec: Spec, lock: Lock, target: LockedTarget, *, venv: Path, groups: tuple[str, ...] | None = None,
         allow_stale: bool = False) -> Path:
    """Install ``target`` into ``venv``; ``groups=None`` installs every dependency group.

    uv runs through the execution seam (this machine here); a dev box without an image runs the
    same two uv commands through its own executor.
    """
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
    executor, uv = LocalExecutor(), uv_binary()
    interpreter = ensure_venv(venv, lock.python_version, executor=executor, uv=uv)
    locked_groups = {g for p in lock.packages_for(target.name) for g in p.groups}
    selected = sorted(locked_groups - {"main"}) if groups is None else groups
    args = ["pip", "sync", "--quiet", "--python", str(interpreter), str(pylock)]
    for group in selected:
        args += ["--group", group]
    # a git dependency of a private repository: the spec's ${VAR} credentials reach git, not a file
    urls = [url for _, requirements in requirements_by_group(spec)
            for url in (parse_requirement(item).url for item in requirements) if url]
    _uv(executor, uv, args, f"installing {target.pylock_path} into {venv}", env=git_credentials_env(urls))
    return interpreter

"""The console-script entry point, with fast paths for `mlenv lock --check` and `mlenv lock`.

CI jobs and pre-commit hooks run `mlenv lock --check` constantly, and loading typer (which loads
pydantic) costs more than the whole check.  When the lock records the digest of the exact
``mlenv.toml`` it was made from, and that digest, the shipped hardware data and every pylock file
still match, the lock is fresh: this module answers with the standard library alone.  Anything
else, including every stale case, goes to the full CLI, which explains what changed.

A plain `mlenv lock` that has work to do runs the same code as the typer command
(``mlenv.lock_command.run_lock`` under ``mlenv.application.run``) without loading typer: there are
no options to parse, and typer would cost a fifth of the time mlenv adds to uv's.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

_FAST_ARGS = (["lock", "--check"], ["lock", "--check", "--json"], ["lock", "--json", "--check"])


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _imported_moved(folder: Path, spec: dict) -> bool:
    for relative, digest in spec.get("imported", {}).get("files", {}).items():
        path = folder / relative
        if not path.is_file() or "sha256:" + _digest(path) != digest:
            return True
    return False


def _provably_fresh() -> int | None:
    """Number of targets when the lock is provably fresh, else None (let the full check decide)."""
    import tomllib

    from mlenv.fsutil import content_digest
    from mlenv.validate import NAME

    start = Path.cwd()
    for folder in (start, *start.parents):
        spec = folder / "mlenv.toml"
        if spec.exists() or spec.is_symlink():  # a broken one is the full CLI's to explain
            break
    else:
        return None
    try:
        lock = tomllib.loads((folder / "mlenv.lock").read_text(encoding="utf-8"))
        catalog = tomllib.loads((Path(__file__).parent / "hardware" / "data" / "catalog.toml").read_text())
        meta = lock["lock"]
        # a hand-edited lock (wrong types, edited pins) goes to the full check, which calls it corrupt
        unsigned = {**lock, "lock": {key: value for key, value in meta.items() if key != "content-sha256"}}
        if meta.get("version") != 1 or meta.get("content-sha256") != content_digest(unsigned):
            return None
        spec_bytes = spec.read_bytes()
        if (meta.get("spec-sha256") != hashlib.sha256(spec_bytes).hexdigest()
                or meta.get("compat-data") != catalog["version"]):
            return None
        if b"[imported" in spec_bytes and _imported_moved(folder, tomllib.loads(spec_bytes.decode())):
            return None  # the full check names the requirements file that changed since `mlenv init`
        for target in lock["target"]:
            if target["pylock"]["path"] != f"pylock.{target['name']}.toml" or not NAME.fullmatch(target["name"]):
                return None
            if _digest(folder / target["pylock"]["path"]) != target["pylock"]["sha256"]:
                return None
        return len(lock["target"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def main() -> None:
    if sys.argv[1:] == ["lock"]:
        # nothing to resolve when the lock provably matches: answer like the full command would
        targets = _provably_fresh()
        if targets is not None:
            print("✓ mlenv.lock is up to date; nothing to resolve", file=sys.stderr)
            sys.exit(0)
        from mlenv.application import Application, run
        from mlenv.lock_command import run_lock

        app = Application()
        run(lambda: run_lock(app), app)
    if sys.argv[1:] in _FAST_ARGS:
        targets = _provably_fresh()
        if targets is not None:
            if "--json" in sys.argv:
                print('{\n  "changes": [],\n  "fresh": true\n}')
            else:
                from mlenv.wording import counted

                print(f"✓ mlenv.lock is up to date ({counted(targets, 'target')})", file=sys.stderr)
            sys.exit(0)
    from mlenv.cli import main as cli_main

    cli_main()

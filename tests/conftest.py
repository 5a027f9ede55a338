"""Shared test plumbing.

Tests use real parts (a local package index over loopback HTTP, a real Docker Engine, papermill
kernels, ...).  A test that needs a service asks for it with ``require``: on a developer machine a
missing service skips the test with the reason, in CI (``CI=true``) it fails the run instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REPO = Path(__file__).resolve().parents[1]

pytest_plugins = ["tests.pkgindex", "tests.docker_services"]


def require(ok: bool, what: str) -> None:
    """Skip (locally) or fail (in CI) when a needed service or tool is missing."""
    if ok:
        return
    if IN_CI:
        pytest.fail(f"required for this test but missing in CI: {what}", pytrace=False)
    pytest.skip(f"missing: {what}")


def run_mlenv(*args: str, cwd: Path | None = None, env: dict | None = None, check: bool = False,
              timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real `mlenv` CLI in a subprocess, as a user would."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("MLENV_DEBUG", None)
    result = subprocess.run(
        [sys.executable, "-m", "mlenv", *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"mlenv {' '.join(args)} exited {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result

"""The one place output goes through: a rich console for people, plain JSON for scripts."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from rich.console import Console

# stdout carries results (tables, JSON); stderr carries progress and errors, so `--json | jq` works.
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

_debug = os.environ.get("MLENV_DEBUG", "") not in ("", "0", "false")


def set_debug(enabled: bool) -> None:
    global _debug
    _debug = _debug or enabled


def debug_enabled() -> bool:
    return _debug


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def status(message: str) -> None:
    """A progress line for people; silent when stderr is not a terminal and not in debug mode."""
    if err.is_terminal or _debug:
        err.print(f"[dim]{message}[/]")


def success(message: str) -> None:
    err.print(f"[green]✓[/] {message}")


def warn(message: str) -> None:
    err.print(f"[yellow]warning:[/] {message}")

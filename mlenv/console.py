"""The one place output goes through: a rich console for people, plain JSON for scripts.

Messages quote user values and tool output (spec values, package names, BuildKit logs), so the
helpers here print their text literally: no rich markup, no ``:emoji:`` codes (``'h100:-1:'`` must
not become a thumbs-down).  Code that styles on purpose builds a ``rich.text.Text``.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from rich.console import Console
from rich.text import Text

# stdout carries results (tables, JSON); stderr carries progress and errors, so `--json | jq` works.
out = Console(highlight=False, soft_wrap=True, emoji=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)

_debug = os.environ.get("MLENV_DEBUG", "") not in ("", "0", "false")


def set_debug(enabled: bool) -> None:
    global _debug
    _debug = _debug or enabled


def debug_enabled() -> bool:
    return _debug


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def status(message: str) -> None:
    """A progress line for people; silent when stderr is not a terminal and not in debug mode."""
    if err.is_terminal or _debug:
        err.print(Text(message, style="dim"))


def success(message: str) -> None:
    err.print(Text.assemble(("✓", "green"), " ", message))


def warn(message: str) -> None:
    err.print(Text.assemble(("warning:", "yellow"), " ", message))


def error(message: str, hint: str | None = None) -> None:
    err.print(Text.assemble(("error:", "red"), " ", message))
    if hint:
        err.print(Text.assemble("  ", ("hint:", "cyan"), " ", hint))

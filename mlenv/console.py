"""The one place output goes through: a rich console for people, plain JSON for scripts.

Messages quote user values and tool output (spec values, package names, BuildKit logs), so the
helpers here print their text literally: no rich markup, no ``:emoji:`` codes (``'h100:-1:'`` must
not become a thumbs-down).  Code that styles on purpose builds a ``rich.text.Text``.

Whatever ``out`` and ``err`` print as text, and every JSON string, goes through
``mlenv.validate.redact_text`` first (a render hook on both consoles): a URL a user wrote with a
password or token in it (an index, a direct requirement, an output place) is printed without its
credentials, whichever code path quotes it.  It happens before rich lays the text out: a wrapped
line could split a URL and hide its ``user:password@`` from a later pass.  Tables are not rewritten:
code that puts user URLs in a cell redacts them itself (``mlenv.importers.Imported.note``).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from rich.console import Console, ConsoleRenderable, RenderHook
from rich.text import Text


def redacted(message: str) -> str:
    """``message`` with the credentials of every URL in it removed (``${VAR}`` placeholders stay)."""
    from mlenv.validate import redact_text  # lazy: `mlenv --help` never prints a message

    return redact_text(message)


def _redacted_text(text: Text) -> Text:
    """``text`` with its URLs redacted, every other character keeping its style."""
    from mlenv.validate import URL_IN_TEXT, redact_url

    plain = text.plain
    if "@" not in plain:  # no userinfo anywhere: the common case costs one scan
        return text
    result, position = text.blank_copy(), 0
    for match in URL_IN_TEXT.finditer(plain):
        clean = redact_url(match.group(0))
        if clean != match.group(0):
            result.append_text(text[position:match.start()])
            result.append(clean)  # in the text's own style: the URL's inner spans are gone with its secret
            position = match.end()
    if position == 0:
        return text
    result.append_text(text[position:])
    return result


class _Redact(RenderHook):
    def process_renderables(self, renderables: list[ConsoleRenderable]) -> list[ConsoleRenderable]:
        return [_redacted_text(item) if isinstance(item, Text) else item for item in renderables]


# stdout carries results (tables, JSON); stderr carries progress and errors, so `--json | jq` works.
out = Console(highlight=False, soft_wrap=True, emoji=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)
out.push_render_hook(_Redact())
err.push_render_hook(_Redact())

_debug = os.environ.get("MLENV_DEBUG", "") not in ("", "0", "false")


def set_debug(enabled: bool) -> None:
    global _debug
    _debug = _debug or enabled


def debug_enabled() -> bool:
    return _debug


def _redacted_json(data: Any) -> Any:
    if isinstance(data, str):
        return redacted(data)
    if isinstance(data, dict):
        return {redacted(str(key)): _redacted_json(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return [_redacted_json(item) for item in data]
    return data


def print_json(data: Any) -> None:
    text = json.dumps(_redacted_json(data), indent=2, sort_keys=True, default=lambda value: redacted(str(value)))
    sys.stdout.write(text + "\n")
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

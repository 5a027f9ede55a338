"""Find where a key lives in TOML source text, so spec errors can point at ``file:line:col``.

tomllib returns plain dicts without positions.  Rather than pull in a round-tripping parser for
every load, this walks the text once (only when an error is being reported) and maps each header
and key line to its key path.  It understands what hand-written config uses: ``[a.b]`` headers,
``[[a]]`` arrays of tables, dotted keys and one level of inline tables on a line.
"""

from __future__ import annotations

import re

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?")
_KEY = re.compile(r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*=""")


def _split_dotted(key: str) -> list[str]:
    parts = re.findall(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""", key)
    return [p[1:-1] if p[:1] in "\"'" else p for p in parts]


def locate(text: str, path: tuple) -> tuple[int, int] | None:
    """Return the 1-based ``(line, column)`` of ``path`` (keys and array indexes), or the closest
    enclosing key or table that exists in the text; None when nothing matches."""
    wanted = [str(p) for p in path]
    best: tuple[int, tuple[int, int]] | None = None  # (matched length, position)
    array_counts: dict[tuple[str, ...], int] = {}
    table: list[str] = []

    def consider(found: list[str], line_no: int, col: int) -> None:
        nonlocal best
        matched = 0
        for have, want in zip(found, wanted):  # noqa: B905 - a prefix match: lengths differ on purpose
            if have != want:
                break
            matched += 1
        if matched == len(found) and matched and (best is None or matched > best[0]):
            best = (matched, (line_no, col))

    for line_no, line in enumerate(text.splitlines(), start=1):
        header = _HEADER.match(line)
        if header:
            keys = _split_dotted(header.group(2))
            if header.group(1) == "[[":
                index = array_counts.get(tuple(keys), 0)
                array_counts[tuple(keys)] = index + 1
                table = keys + [str(index)]
            else:
                table = keys
            consider(table, line_no, line.index(header.group(2)) + 1)
            continue
        key = _KEY.match(line)
        if not key:
            continue
        full = table + _split_dotted(key.group(1))
        consider(full, line_no, key.start(1) + 1)
        # keys inside an inline table on the same line: name = { a = 1, b = 2 }
        rest = line[key.end():]
        if len(wanted) > len(full) and rest.lstrip().startswith("{"):
            inner = wanted[len(full)]
            match = re.search(r"[{,]\s*(" + re.escape(inner) + r")\s*=", rest)
            if match:
                consider(full + [inner], line_no, key.end() + match.start(1) + 1)
    return best[1] if best else None

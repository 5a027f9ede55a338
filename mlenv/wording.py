"""Wording shared by messages (standard library only: the `lock --check` fast path uses it)."""

from __future__ import annotations


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """``"1 target"``, ``"3 targets"``; ``plural`` where adding an s is wrong (``"dependencies"``)."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"

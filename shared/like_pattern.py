"""Substring search with SQL `LIKE`/`ILIKE`, safe for any user-typed text."""

from __future__ import annotations

LIKE_ESCAPE = "\\"


def escape_like(text: str) -> str:
    """`text` with LIKE's wildcards (`%`, `_`) and the escape character itself taken literally;
    use with `escape=LIKE_ESCAPE`."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def contains_pattern(text: str) -> str:
    """A LIKE pattern matching any value that contains `text` literally."""
    return f"%{escape_like(text)}%"

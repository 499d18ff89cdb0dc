"""LIKE patterns built from user text match that text literally."""

from __future__ import annotations

import re

import pytest

from shared.like_pattern import LIKE_ESCAPE, contains_pattern, escape_like


def _like_to_regex(pattern: str, escape: str) -> re.Pattern[str]:
    """SQL LIKE semantics (with an escape character) as a regular expression."""
    out, chars = [], iter(pattern)
    for char in chars:
        if char == escape:
            out.append(re.escape(next(chars)))
        elif char == "%":
            out.append(".*")
        elif char == "_":
            out.append(".")
        else:
            out.append(re.escape(char))
    return re.compile("".join(out), re.DOTALL)


@pytest.mark.parametrize("text", ["50%", "a_b", "back\\slash", "%_\\", "plain", ""])
def test_wildcards_in_user_text_are_literal(text):
    pattern = _like_to_regex(contains_pattern(text), LIKE_ESCAPE)
    assert pattern.fullmatch(f"before {text} after")
    if text in ("50%", "a_b"):
        assert not pattern.fullmatch(text.replace("%", "x").replace("_", "x"))


def test_escape_like_escapes_the_escape_character_first():
    assert escape_like("\\%") == "\\\\\\%"

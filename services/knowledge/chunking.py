"""Splitting a document's text into overlapping chunks that fit a prompt.

Paragraphs are kept whole where they fit; a chunk starts with the end of the previous one
(`overlap_chars`, cut at a word boundary) so a sentence that straddles two chunks is whole in
one of them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_WHITESPACE = re.compile(r"\s+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")
SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Section:
    """Text of one page (PDF) or of a whole document (`page` None)."""

    page: int | None
    text: str


@dataclass(frozen=True)
class TextChunk:
    position: int
    page: int | None
    content: str


def split_into_chunks(
    sections: Iterable[Section], max_chars: int, overlap_chars: int
) -> list[TextChunk]:
    """Chunks of at most `max_chars` characters; consecutive ones share up to `overlap_chars`."""
    if max_chars <= 2 * (overlap_chars + len(SEPARATOR)):
        raise ValueError("max_chars must be more than twice overlap_chars")
    piece_limit = max_chars - overlap_chars - len(SEPARATOR)
    chunks: list[TextChunk] = []
    current: list[str] = []
    length = 0
    page: int | None = None
    has_own_text = False
    for unit_page, unit in _units(sections, piece_limit):
        added = len(unit) + (len(SEPARATOR) if current else 0)
        if has_own_text and length + added > max_chars:
            text = SEPARATOR.join(current)
            chunks.append(TextChunk(len(chunks), page, text))
            tail = _tail(text, overlap_chars)
            current, length = ([tail], len(tail)) if tail else ([], 0)
            has_own_text = False
            added = len(unit) + (len(SEPARATOR) if current else 0)
        if not has_own_text:
            page = unit_page
        current.append(unit)
        length += added
        has_own_text = True
    if has_own_text:
        chunks.append(TextChunk(len(chunks), page, SEPARATOR.join(current)))
    return chunks


def _units(sections: Iterable[Section], limit: int) -> Iterator[tuple[int | None, str]]:
    """Paragraphs with their whitespace collapsed; one longer than `limit` is cut at sentence
    ends, else at spaces, else anywhere."""
    for section in sections:
        for raw in _PARAGRAPH_BREAK.split(section.text):
            paragraph = _WHITESPACE.sub(" ", raw).strip()
            while len(paragraph) > limit:
                cut = _cut_point(paragraph, limit)
                yield section.page, paragraph[:cut].rstrip()
                paragraph = paragraph[cut:].lstrip()
            if paragraph:
                yield section.page, paragraph


def _cut_point(text: str, limit: int) -> int:
    window = text[: limit + 1]
    sentence_ends = [m.end() for m in _SENTENCE_END.finditer(window)]
    if sentence_ends and sentence_ends[-1] > limit // 2:
        return sentence_ends[-1]
    space = window.rfind(" ")
    return space if space > limit // 2 else limit


def _tail(text: str, overlap_chars: int) -> str:
    """The last `overlap_chars` characters of `text`, starting at a word."""
    if overlap_chars <= 0:
        return ""
    if len(text) <= overlap_chars:
        return text
    tail = text[-overlap_chars:]
    space = tail.find(" ")
    return tail[space + 1 :] if space >= 0 else tail

"""What kind of document an upload is, decided from its bytes (never from its name)."""

from __future__ import annotations

import codecs
import io
import re
import zipfile
from enum import StrEnum


class DocumentType(StrEnum):
    TEXT = "text/plain"
    MARKDOWN = "text/markdown"
    HTML = "text/html"
    PDF = "application/pdf"
    DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"


class UnsupportedDocument(ValueError):
    """The bytes are none of the accepted document types."""


_PDF_MAGIC = b"%PDF-"
_ZIP_MAGIC = b"PK\x03\x04"
_DOCX_PART = "word/document.xml"
# Control characters other than tab, newline, form feed and carriage return mark binary data.
_BINARY_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_HTML_START = re.compile(r"^\s*(<!--.*?-->\s*)*<(!doctype\s+html|html[\s>])", re.I | re.S)
_HTML_TAGS = re.compile(r"<(head|body|div|p|h[1-6]|table|ul|ol|article|section)[\s>]", re.I)
_MARKDOWN_STRONG = (
    re.compile(r"^#{1,6}\s+\S", re.M),  # a heading
    re.compile(r"^(```|~~~)", re.M),  # a fenced code block
)
_MARKDOWN_WEAK = (
    re.compile(r"^\s{0,3}[-*+]\s+\S", re.M),  # a bullet list
    re.compile(r"\[[^\]\n]+\]\([^)\s]+\)"),  # a link
    re.compile(r"^\s{0,3}>\s", re.M),  # a quote
    re.compile(r"(\*\*|__)\S.*?\S(\*\*|__)"),  # bold
    re.compile(r"^\s{0,3}\d+\.\s+\S", re.M),  # a numbered list
)


def sniff(data: bytes) -> DocumentType:
    """The type of `data`; `UnsupportedDocument` for anything else (images, archives, binaries)."""
    # The PDF header may follow a little junk; readers accept it within the first kilobyte.
    if _PDF_MAGIC in data[:1024]:
        return DocumentType.PDF
    if data.startswith(_ZIP_MAGIC):
        if _is_word_document(data):
            return DocumentType.DOCX
        raise UnsupportedDocument("a ZIP archive that is not a Word (.docx) document")
    text = decode_text(data)
    if text is None:
        raise UnsupportedDocument("binary data of an unsupported type")
    head = text[:8192]
    if _HTML_START.match(head) or len(_HTML_TAGS.findall(head)) >= 3:
        return DocumentType.HTML
    if any(p.search(head) for p in _MARKDOWN_STRONG) or (
        sum(1 for p in _MARKDOWN_WEAK if p.search(head)) >= 2
    ):
        return DocumentType.MARKDOWN
    return DocumentType.TEXT


def decode_text(data: bytes) -> str | None:
    """`data` as text (UTF-8, UTF-16 with a byte-order mark, else Windows-1252), or None when it
    is not text."""
    for bom, encoding in (
        (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if data.startswith(bom):
            try:
                text = data.decode(encoding)
            except UnicodeDecodeError:
                return None
            return None if _BINARY_CHARACTERS.search(text) else text
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        try:
            text = data.decode("cp1252")
        except UnicodeDecodeError:
            return None
    return None if _BINARY_CHARACTERS.search(text) else text


def _is_word_document(data: bytes) -> bool:
    # Only the central directory is read here, never a member's content.
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return _DOCX_PART in archive.namelist()
    except (zipfile.BadZipFile, ValueError, OSError):
        return False

"""Text extraction, run in a child process (`python -m services.knowledge.extraction`).

Parsers of hostile documents are where memory and CPU blow up (decompression bombs, page
trees of thousands of pages, pathological content streams). The child limits its own address
space and CPU time before it reads a byte, so such a file fails alone; the parent
(`sandbox.py`) also kills it at a wall-clock deadline. Protocol: the parameters as JSON in
argv[1], the document on stdin, one JSON object on stdout.
"""

from __future__ import annotations

import io
import json
import resource
import sys
import zipfile
from dataclasses import asdict, dataclass
from html.parser import HTMLParser
from typing import Any

from services.knowledge.chunking import Section, split_into_chunks
from services.knowledge.sniffing import DocumentType, decode_text

TEXT_SEARCH_CONFIGS = {
    "da": "danish",
    "de": "german",
    "en": "english",
    "es": "spanish",
    "fi": "finnish",
    "fr": "french",
    "hu": "hungarian",
    "it": "italian",
    "nl": "dutch",
    "no": "norwegian",
    "nb": "norwegian",
    "nn": "norwegian",
    "pt": "portuguese",
    "ro": "romanian",
    "ru": "russian",
    "sv": "swedish",
    "tr": "turkish",
}
"""Language codes → PostgreSQL text search configurations (stemming, stop words)."""

MAX_DOCX_MEMBERS = 2000
MAX_COMPRESSION_RATIO = 200
"""Real Word XML compresses 5 to 20 times; a member expanding further than this is a bomb."""


@dataclass(frozen=True)
class ExtractionParameters:
    content_type: str
    max_pages: int
    max_unpacked_bytes: int
    max_characters: int
    chunk_chars: int
    chunk_overlap_chars: int
    default_language: str
    memory_bytes: int
    cpu_seconds: int


class Refused(Exception):
    """The document cannot be indexed; `reason` is a code, `message` tells a person what to do."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Document:
    sections: list[Section]
    pages: int | None
    language_code: str | None


def text_search_config(language_code: str | None, default: str) -> str:
    if not language_code:
        return default
    return TEXT_SEARCH_CONFIGS.get(language_code.strip().lower()[:2], default)


def read_document(data: bytes, params: ExtractionParameters) -> Document:
    kind = DocumentType(params.content_type)
    if kind is DocumentType.PDF:
        return _read_pdf(data, params.max_pages)
    if kind is DocumentType.DOCX:
        return _read_docx(data, params.max_unpacked_bytes)
    text = decode_text(data)
    if text is None:
        raise Refused("parse_error", "The file is not readable text.")
    if kind is DocumentType.HTML:
        parser = _HtmlText()
        parser.feed(text)
        parser.close()
        return Document([Section(None, parser.text())], None, parser.language)
    return Document([Section(None, text)], None, None)


def _read_pdf(data: bytes, max_pages: int) -> Document:
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:
                # Owner-password-only PDFs open with an empty user password.
                unlocked = bool(reader.decrypt(""))
            except (DependencyError, PdfReadError, NotImplementedError):
                # pypdf raises NotImplementedError for encryption schemes it does not support:
                # such a file is refused like any other locked one, not a crash.
                unlocked = False
            if not unlocked:
                raise Refused(
                    "encrypted",
                    "The PDF is password-protected; upload a copy without a password.",
                )
        pages = len(reader.pages)
        if pages > max_pages:
            raise Refused(
                "too_many_pages",
                f"The PDF has {pages} pages; at most {max_pages} are indexed. "
                "Split it into smaller files.",
            )
        sections = [
            Section(number, page.extract_text() or "")
            for number, page in enumerate(reader.pages, start=1)
        ]
        catalog = reader.trailer["/Root"].get_object()
        language = catalog.get("/Lang") if isinstance(catalog, dict) else None
    except Refused:
        raise
    except MemoryError:
        raise
    except Exception as exc:
        raise Refused(
            "parse_error", f"The file could not be read as a PDF ({_brief(exc)})."
        ) from exc
    if not any(s.text.strip() for s in sections):
        raise Refused(
            "no_text",
            "The PDF has no text layer (a scanned document?); "
            "upload a version with selectable text.",
        )
    return Document(sections, pages, str(language) if language else None)


def _read_docx(data: bytes, max_unpacked_bytes: int) -> Document:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, ValueError) as exc:
        raise Refused(
            "parse_error", f"The file is not a valid Word document ({_brief(exc)})."
        ) from exc
    # Declared sizes bound what zipfile will inflate (it stops at a member's declared size), so
    # checking them before parsing is enough to refuse a bomb without inflating it.
    unpacked = sum(m.file_size for m in members)
    if len(members) > MAX_DOCX_MEMBERS or unpacked > max_unpacked_bytes:
        raise Refused(
            "decompression_bomb",
            f"The document unpacks to {unpacked // 2**20} MiB in {len(members)} parts "
            f"(limit {max_unpacked_bytes // 2**20} MiB); it is refused as a likely "
            "decompression bomb.",
        )
    for member in members:
        if member.file_size > 2**20 and member.file_size > MAX_COMPRESSION_RATIO * max(
            member.compress_size, 1
        ):
            raise Refused(
                "decompression_bomb",
                f"A part of the document ({member.filename}) expands "
                f"{member.file_size // max(member.compress_size, 1)} times; it is refused as a "
                "likely decompression bomb.",
            )
    import docx

    try:
        document = docx.Document(io.BytesIO(data))
        paragraphs = [p.text for p in document.paragraphs]
        for table in document.tables:
            for row in table.rows:
                paragraphs.append(" | ".join(cell.text for cell in row.cells))
        language = document.core_properties.language
    except MemoryError:
        raise
    except Exception as exc:
        raise Refused(
            "parse_error", f"The file could not be read as a Word document ({_brief(exc)})."
        ) from exc
    return Document([Section(None, "\n\n".join(paragraphs))], None, language or None)


class _HtmlText(HTMLParser):
    """Visible text of an HTML page, a paragraph per block element; `lang` of `<html>`."""

    _SKIPPED = frozenset({"script", "style", "noscript", "template", "head", "svg"})
    _BLOCKS = frozenset(
        {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article",
         "header", "footer", "blockquote", "pre", "table", "ul", "ol", "dd", "dt", "title"}
    )  # fmt: skip

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._parts: list[str] = []
        self._skipping = 0
        self.language: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "html" and self.language is None:
            self.language = dict(attrs).get("lang")
        if tag in self._SKIPPED:
            self._skipping += 1
        elif tag in self._BLOCKS:
            self._parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIPPED:
            self._skipping = max(0, self._skipping - 1)
        elif tag in self._BLOCKS:
            self._parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self._parts.append(data)

    def text(self) -> str:
        return "".join(self._parts)


def _brief(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


def extract(data: bytes, params: ExtractionParameters) -> dict[str, Any]:
    """The child's whole job: document → chunks, or a refusal."""
    try:
        document = read_document(data, params)
        characters = sum(len(s.text.strip()) for s in document.sections)
        if characters > params.max_characters:
            raise Refused(
                "too_much_text",
                f"The file holds {characters} characters of text; at most "
                f"{params.max_characters} are indexed. Split it into smaller files.",
            )
        if not any(s.text.strip() for s in document.sections):
            raise Refused("no_text", "The file contains no text.")
        chunks = split_into_chunks(
            document.sections, params.chunk_chars, params.chunk_overlap_chars
        )
    except Refused as refused:
        return {"ok": False, "reason": refused.reason, "message": refused.message}
    except MemoryError:
        return {
            "ok": False,
            "reason": "too_large",
            "message": f"Reading the file needed more than {params.memory_bytes // 2**20} MiB "
            "of memory; upload a smaller or simpler file.",
        }
    return {
        "ok": True,
        "pages": document.pages,
        "characters": characters,
        "language": text_search_config(document.language_code, params.default_language),
        "chunks": [asdict(c) for c in chunks],
    }


def _limit_resources(params: ExtractionParameters) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (params.memory_bytes, params.memory_bytes))
    # The kernel stops a runaway parser even if the parent is gone.
    resource.setrlimit(resource.RLIMIT_CPU, (params.cpu_seconds, params.cpu_seconds + 1))


def main() -> None:
    params = ExtractionParameters(**json.loads(sys.argv[1]))
    _limit_resources(params)
    data = sys.stdin.buffer.read()
    result = extract(data, params)
    sys.stdout.write(json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()

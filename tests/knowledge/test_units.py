"""Pure pieces of the knowledge path: sniffing, chunking, extraction, budgets, mock embeddings."""

from __future__ import annotations

import codecs
import itertools
import math

import pytest

from services.chat_worker.knowledge import knowledge_prompt, select_within_budget
from services.chat_worker.prompt import build_prompt, estimate_tokens
from services.knowledge.chunking import Section, split_into_chunks
from services.knowledge.extraction import ExtractionParameters, extract
from services.knowledge.retrieval import Hit, sources_of
from services.knowledge.sniffing import DocumentType, UnsupportedDocument, sniff
from services.mock_llm.service import embed_text
from tests.knowledge import documents

PARAMS = ExtractionParameters(
    content_type="text/plain",
    max_pages=10,
    max_unpacked_bytes=10 * 2**20,
    max_characters=100_000,
    chunk_chars=1000,
    chunk_overlap_chars=150,
    default_language="english",
    memory_bytes=2**30,
    cpu_seconds=10,
)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"Just some notes.\nSecond line.", DocumentType.TEXT),
        (codecs.BOM_UTF8 + "Grüße".encode(), DocumentType.TEXT),
        ("Grüße aus Köln".encode("utf-16"), DocumentType.TEXT),
        (b"# Title\n\nBody text.", DocumentType.MARKDOWN),
        (b"- one\n- two\n\nSee [docs](http://x.example).", DocumentType.MARKDOWN),
        (b"<!DOCTYPE html><html><body>Hi</body></html>", DocumentType.HTML),
        (b"  <!-- c --><html lang='de'><p>x</p></html>", DocumentType.HTML),
        (documents.pdf(["hello"]), DocumentType.PDF),
        (documents.word_document(["hello"]), DocumentType.DOCX),
    ],
)
def test_types_are_sniffed_from_the_bytes(data: bytes, expected: DocumentType) -> None:
    assert sniff(data) is expected


@pytest.mark.parametrize(
    "data",
    [
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)),
        b"GIF89a\x01\x00\x01\x00\x00\x00\x00",
        b"PK\x03\x04not really a zip",
        b"text with a NUL \x00 inside",
    ],
)
def test_other_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(UnsupportedDocument):
        sniff(data)


def test_paragraphs_of_about_half_a_chunk_each_fill_one_chunk_with_overlap() -> None:
    paragraphs = [documents.paragraph(f"topic {n}", seed=n) for n in range(4)]
    assert all(500 < len(p) < 850 for p in paragraphs)
    chunks = split_into_chunks([Section(None, "\n\n".join(paragraphs))], 1000, 150)
    assert [c.position for c in chunks] == [0, 1, 2, 3]
    assert all(len(c.content) <= 1000 for c in chunks)
    for previous, chunk in itertools.pairwise(chunks):
        overlap = chunk.content.split("\n\n")[0]
        assert 0 < len(overlap) <= 150 and previous.content.endswith(overlap)
    assert f"topic {3}" in chunks[3].content


def test_small_paragraphs_share_a_chunk_and_long_ones_are_cut_at_sentences() -> None:
    small = [Section(1, "First short one."), Section(2, "Second short one.")]
    (only,) = split_into_chunks(small, 1000, 150)
    assert (only.page, only.content) == (1, "First short one.\n\nSecond short one.")
    sentence = "This sentence has exactly some words in it. "
    long = Section(None, sentence * 100)  # ~4 400 characters, one paragraph
    chunks = split_into_chunks([long], 1000, 150)
    assert len(chunks) >= 5
    assert all(len(c.content) <= 1000 for c in chunks)
    assert all(c.content.rstrip().endswith(".") for c in chunks)


def test_pages_are_kept_and_empty_text_gives_no_chunks() -> None:
    chunks = split_into_chunks(
        [Section(1, documents.paragraph("a")), Section(2, documents.paragraph("b", seed=1))],
        1000,
        150,
    )
    assert [c.page for c in chunks] == [1, 2]
    assert split_into_chunks([Section(None, "  \n\n ")], 1000, 150) == []


def test_html_text_skips_scripts_and_reads_the_language() -> None:
    html = (
        b"<html lang='fr-FR'><head><script>var secret = 1;</script><style>p{}</style></head>"
        b"<body><h1>Titre</h1><p>Bonjour &amp; bienvenue</p></body></html>"
    )
    result = extract(html, ExtractionParameters(**{**vars(PARAMS), "content_type": "text/html"}))
    assert result["ok"] and result["language"] == "french"
    (chunk,) = result["chunks"]
    assert chunk["content"] == "Titre\n\nBonjour & bienvenue"


def test_a_bomb_is_refused_from_its_declared_sizes() -> None:
    params = ExtractionParameters(**{**vars(PARAMS), "content_type": DocumentType.DOCX.value})
    result = extract(documents.zip_bomb_docx(unpacked_mib=20), params)
    assert (result["ok"], result["reason"]) == (False, "decompression_bomb")
    ok = extract(documents.word_document(["Alpha paragraph.", "Beta paragraph."]), params)
    assert ok["ok"] and ok["chunks"][0]["content"] == "Alpha paragraph.\n\nBeta paragraph."


def _hit(file_id: str, position: int, content: str) -> Hit:
    return Hit(file_id, f"{file_id}.txt", position, None, content, 1.0)


def test_excerpts_are_chosen_within_the_budget_in_rank_order() -> None:
    hits = [_hit("a", 2, "x" * 400), _hit("b", 0, "y" * 4000), _hit("a", 0, "z" * 400)]
    chosen = select_within_budget(hits, budget_tokens=300, max_chunks=5)
    assert [(h.file_id, h.position) for h in chosen] == [("a", 2), ("a", 0)]
    assert estimate_tokens(knowledge_prompt(chosen)) <= 300 + 10
    assert [s.model_dump() for s in sources_of(chosen)] == [
        {"file_id": "a", "name": "a.txt", "positions": [0, 2]}
    ]
    assert select_within_budget(hits, budget_tokens=300, max_chunks=1) == hits[:1]


def test_knowledge_follows_the_system_prompt_and_costs_history() -> None:
    from services.chat_worker.prompt import Turn

    history = [Turn("user", "q" * 400), Turn("assistant", "a" * 400), Turn("user", "now?")]
    without = build_prompt("sys", history, budget_tokens=260)
    with_knowledge = build_prompt("sys", history, budget_tokens=260, knowledge="k" * 400)
    assert [m["role"] for m in without] == ["system", "user", "assistant", "user"]
    assert [m["content"][:1] for m in with_knowledge] == ["s", "k", "n"]


def test_mock_embeddings_are_deterministic_and_reflect_shared_words() -> None:
    question = embed_text("How often do lighthouse keepers log the tide?")
    assert question == embed_text("How often do lighthouse keepers log the tide?")
    assert math.isclose(sum(v * v for v in question), 1.0)

    def cosine(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    related = embed_text(documents.paragraph("Lighthouse keepers log the tide every hour"))
    unrelated = embed_text(documents.paragraph("Turbines need inspection"))
    assert cosine(question, related) > 0.15 > 0.1 > cosine(question, unrelated)


def test_analytics_counts_file_events_by_outcome_and_reason() -> None:
    from services.analytics_consumer.projection import BatchEffects
    from shared.events import FileFailed, FileProcessed, FileUploaded

    ids = {"producer": "test", "file_id": "f" * 14, "assistant_id": "a" * 12}
    effects = BatchEffects(prices=None)  # type: ignore[arg-type]
    for event in (
        FileUploaded(**ids, name="x.pdf", content_type="application/pdf", size_bytes=10),
        FileUploaded(**ids, name="y.pdf", content_type="application/pdf", size_bytes=10),
        FileProcessed(**ids, chunks=3, characters=900),
        FileFailed(**ids, reason="encrypted", message="password"),
    ):
        effects.add(event)
    assert dict(effects.counters) == {
        "file.uploaded": 2,
        "file.processed": 1,
        "file.chunks_indexed": 3,
        "file.failed": 1,
        "file.failed.encrypted": 1,
    }

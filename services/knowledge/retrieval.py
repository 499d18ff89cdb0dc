"""Finding the chunks of an assistant's processed files that best match a question.

Full text: each file's chunks were indexed with its language's text search configuration, so
the question is parsed once per language (`websearch_to_tsquery`) and matched against the
chunks of that language. The parsed terms are OR-ed rather than AND-ed: a question rarely
repeats every word of the passage that answers it; `ts_rank` still ranks chunks with more
matching terms first (`ts_rank_cd` measured several times slower per matching chunk).

Hybrid (pgvector and an embeddings model): the full-text ranking and a cosine-similarity
ranking are fused by reciprocal rank (RRF, k = 60), so neither score's scale matters; a chunk
only the vector side found must still be similar enough (`min_similarity`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from services.knowledge.models import CHUNKS, FILES, REPLY_SOURCES, FileStatus
from shared.events import SourceRef

RRF_K = 60
CANDIDATES = 50
"""How many chunks each ranking contributes before fusion."""


@dataclass(frozen=True)
class Hit:
    file_id: str
    name: str
    position: int
    page: int | None
    content: str
    score: float


_QUERIES = f"""
languages AS MATERIALIZED (
    SELECT DISTINCT language FROM {FILES}
    WHERE assistant_id = $1 AND status = '{FileStatus.PROCESSED.value}' AND language IS NOT NULL
), queries AS MATERIALIZED (
    SELECT language,
           replace(websearch_to_tsquery(language::regconfig, $2)::text, ' & ', ' | ')::tsquery
               AS query
    FROM languages
), text_ranked AS (
    SELECT m.file_id, m.position,
           row_number() OVER (ORDER BY m.score DESC, m.file_id, m.position) AS rank
    FROM queries AS q
    -- LATERAL: the parsed query is a parameter of the inner scan, so the GIN index finds the
    -- matching chunks instead of every chunk of the assistant being tested.
    CROSS JOIN LATERAL (
        SELECT c.file_id, c.position, ts_rank(c.tsv, q.query) AS score
        FROM {CHUNKS} AS c
        WHERE c.assistant_id = $1 AND c.language = q.language AND c.tsv @@ q.query
        ORDER BY score DESC
        LIMIT $3
    ) AS m
    ORDER BY rank
    LIMIT $3
)"""  # noqa: S608 (only table names and enum values are interpolated; data are $n parameters)

_FULL_TEXT = f"""
WITH {_QUERIES}
SELECT c.file_id, f.name, c.position, c.page, c.content, 1.0 / ({RRF_K} + t.rank) AS score
FROM text_ranked AS t
JOIN {CHUNKS} AS c USING (file_id, position)
JOIN {FILES} AS f ON f.id = c.file_id
ORDER BY t.rank
"""  # noqa: S608 (only table names and constants are interpolated; data are $n parameters)

_HYBRID = f"""
WITH {_QUERIES}, nearest AS (
    SELECT c.file_id, c.position, 1 - (c.embedding <=> $4::vector) AS similarity
    FROM {CHUNKS} AS c
    WHERE c.assistant_id = $1 AND c.embedding_model = $5
    ORDER BY c.embedding <=> $4::vector
    LIMIT $3
), vector_ranked AS (
    SELECT file_id, position,
           row_number() OVER (ORDER BY similarity DESC, file_id, position) AS rank
    FROM nearest WHERE similarity >= $6
), fused AS (
    SELECT file_id, position,
           coalesce(1.0 / ({RRF_K} + t.rank), 0) + coalesce(1.0 / ({RRF_K} + v.rank), 0) AS score
    FROM text_ranked AS t FULL JOIN vector_ranked AS v USING (file_id, position)
)
SELECT c.file_id, f.name, c.position, c.page, c.content, fused.score
FROM fused
JOIN {CHUNKS} AS c USING (file_id, position)
JOIN {FILES} AS f ON f.id = c.file_id
ORDER BY fused.score DESC, c.file_id, c.position
"""  # noqa: S608 (only table names and constants are interpolated; data are $n parameters)


async def search_full_text(
    connection: asyncpg.Connection, assistant_id: str, question: str, limit: int = CANDIDATES
) -> list[Hit]:
    rows = await connection.fetch(_FULL_TEXT, assistant_id, question, limit)
    return [_hit(r) for r in rows]


async def search_hybrid(
    connection: asyncpg.Connection,
    assistant_id: str,
    question: str,
    embedding: str,
    embedding_model: str,
    min_similarity: float,
    limit: int = CANDIDATES,
) -> list[Hit]:
    """`embedding` is the question's vector as a pgvector literal (`[0.1,0.2,...]`)."""
    rows = await connection.fetch(
        _HYBRID, assistant_id, question, limit, embedding, embedding_model, min_similarity
    )
    return [_hit(r) for r in rows]


def _hit(row: asyncpg.Record) -> Hit:
    return Hit(
        row["file_id"], row["name"], row["position"], row["page"], row["content"],
        float(row["score"]),
    )  # fmt: skip


def sources_of(hits: Sequence[Hit]) -> list[SourceRef]:
    """The files and chunk positions `hits` come from, files in order of their best hit."""
    positions: dict[str, list[int]] = {}
    names: dict[str, str] = {}
    for hit in hits:
        positions.setdefault(hit.file_id, []).append(hit.position)
        names[hit.file_id] = hit.name
    return [
        SourceRef(file_id=file_id, name=names[file_id], positions=sorted(p))
        for file_id, p in positions.items()
    ]


_STORE_SOURCES = f"""
INSERT INTO {REPLY_SOURCES} (message_id, sources) VALUES ($1, $2::jsonb)
ON CONFLICT (message_id) DO UPDATE SET sources = excluded.sources
"""  # noqa: S608 (only the table name is interpolated; data are $n parameters)


async def store_reply_sources(
    connection: asyncpg.Connection, message_id: str, sources: Sequence[SourceRef]
) -> None:
    payload = json.dumps([s.model_dump() for s in sources])
    await connection.execute(_STORE_SOURCES, message_id, payload)


async def reply_sources(
    connection: asyncpg.Connection, message_ids: Sequence[str]
) -> dict[str, list[SourceRef]]:
    rows = await connection.fetch(
        f"SELECT message_id, sources::text AS sources FROM {REPLY_SOURCES} "  # noqa: S608
        "WHERE message_id = ANY($1::text[])",
        list(message_ids),
    )
    return {
        r["message_id"]: [SourceRef.model_validate(s) for s in json.loads(r["sources"])]
        for r in rows
    }

"""Queries on the `knowledge` schema: files (upload, list, delete) and their indexing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from services.knowledge.chunking import TextChunk
from services.knowledge.models import (
    CHUNKS,
    FILE_CONTENTS,
    FILES,
    OUTBOX,
    FileStatus,
    KnowledgeFile,
)
from shared.outbox import StagedEvent, outbox_rows_for


async def lock_owner_quota(session: AsyncSession, owner_id: str) -> None:
    """Serialise one user's uploads until the transaction ends, so two concurrent uploads
    cannot both pass the same quota check."""
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
        {"key": f"knowledge.quota:{owner_id}"},
    )


async def count_assistant_files(session: AsyncSession, assistant_id: str) -> int:
    return int(
        await session.scalar(select(func.count()).where(KnowledgeFile.assistant_id == assistant_id))
        or 0
    )


async def owner_bytes(session: AsyncSession, owner_id: str) -> int:
    return int(
        await session.scalar(
            select(func.coalesce(func.sum(KnowledgeFile.size_bytes), 0)).where(
                KnowledgeFile.owner_id == owner_id
            )
        )
        or 0
    )


async def list_files(
    session: AsyncSession, owner_id: str, assistant_id: str, skip: int, limit: int
) -> tuple[Sequence[KnowledgeFile], int]:
    where = (KnowledgeFile.owner_id == owner_id, KnowledgeFile.assistant_id == assistant_id)
    total = await session.scalar(select(func.count()).where(*where))
    items = (
        await session.scalars(
            select(KnowledgeFile)
            .where(*where)
            .order_by(KnowledgeFile.created_at.desc(), KnowledgeFile.id)
            .offset(skip)
            .limit(limit)
        )
    ).all()
    return items, int(total or 0)


async def get_file(
    session: AsyncSession, owner_id: str, assistant_id: str, file_id: str
) -> KnowledgeFile | None:
    return (
        await session.scalars(
            select(KnowledgeFile).where(
                KnowledgeFile.id == file_id,
                KnowledgeFile.owner_id == owner_id,
                KnowledgeFile.assistant_id == assistant_id,
            )
        )
    ).one_or_none()


# --- indexing (the knowledge worker, on the driver connection) ------------------------------


@dataclass(frozen=True)
class PendingFile:
    file_id: str
    assistant_id: str
    owner_id: str
    content_type: str
    status: str
    data: bytes


_PENDING_FILE = f"""
SELECT f.id, f.assistant_id, f.owner_id, f.content_type, f.status, c.data
FROM {FILES} AS f JOIN {FILE_CONTENTS} AS c ON c.file_id = f.id
WHERE f.id = $1
"""  # noqa: S608 (only table names are interpolated; data are $n parameters)


async def load_file(connection: asyncpg.Connection, file_id: str) -> PendingFile | None:
    row = await connection.fetchrow(_PENDING_FILE, file_id)
    if row is None:
        return None
    return PendingFile(
        row["id"], row["assistant_id"], row["owner_id"], row["content_type"], row["status"],
        bytes(row["data"]),
    )  # fmt: skip


_LOCK_PENDING = f"SELECT status FROM {FILES} WHERE id = $1 FOR UPDATE"  # noqa: S608

_INSERT_CHUNKS = f"""
INSERT INTO {CHUNKS} (file_id, position, assistant_id, page, content, language, tsv)
SELECT $1, c.position, $2, c.page, c.content, $3::text, to_tsvector($3::text::regconfig, c.content)
FROM unnest($4::int[], $5::int[], $6::text[]) AS c(position, page, content)
ON CONFLICT DO NOTHING
"""  # noqa: S608 (only the table name is interpolated; data are $n parameters)

_INSERT_CHUNKS_WITH_EMBEDDINGS = f"""
INSERT INTO {CHUNKS}
    (file_id, position, assistant_id, page, content, language, tsv, embedding, embedding_model)
SELECT $1, c.position, $2, c.page, c.content, $3::text, to_tsvector($3::text::regconfig, c.content),
       c.embedding::vector, $8
FROM unnest($4::int[], $5::int[], $6::text[], $7::text[]) AS c(position, page, content, embedding)
ON CONFLICT DO NOTHING
"""  # noqa: S608 (only the table name is interpolated; data are $n parameters)

_MARK_PROCESSED = f"""
WITH done AS (
    UPDATE {FILES}
    SET status = '{FileStatus.PROCESSED.value}', chunk_count = $2, char_count = $3,
        page_count = $4, language = $5, processed_at = now(), updated_at = now()
    WHERE id = $1
    RETURNING id
), {outbox_rows_for(OUTBOX, "done", 6)}
SELECT count(*) FROM done
"""  # noqa: S608 (only table names and enum values are interpolated; data are $n parameters)

_MARK_FAILED = f"""
WITH failed AS (
    UPDATE {FILES}
    SET status = '{FileStatus.FAILED.value}', failure_reason = $2, failure_message = $3,
        processed_at = now(), updated_at = now()
    WHERE id = $1 AND status = '{FileStatus.UPLOADED.value}'
    RETURNING id
), {outbox_rows_for(OUTBOX, "failed", 4)}
SELECT count(*) FROM failed
"""  # noqa: S608 (only table names and enum values are interpolated; data are $n parameters)


@dataclass(frozen=True)
class IndexedText:
    chunks: list[TextChunk]
    characters: int
    pages: int | None
    language: str
    embeddings: list[str] | None = None
    """pgvector literals, one per chunk, when hybrid retrieval is on."""
    embedding_model: str | None = None


async def store_index(
    connection: asyncpg.Connection, file: PendingFile, indexed: IndexedText, event: StagedEvent
) -> bool:
    """Chunks, the file's new state and `file.processed`, in one transaction; False (nothing
    written) when the file is no longer waiting: indexed by another delivery, or deleted."""
    async with connection.transaction():
        status = await connection.fetchval(_LOCK_PENDING, file.file_id)
        if status != FileStatus.UPLOADED:
            return False
        chunks = indexed.chunks
        columns = (
            [c.position for c in chunks],
            [c.page for c in chunks],
            [c.content for c in chunks],
        )
        if indexed.embeddings is not None:
            await connection.execute(
                _INSERT_CHUNKS_WITH_EMBEDDINGS,
                file.file_id, file.assistant_id, indexed.language, *columns,
                indexed.embeddings, indexed.embedding_model,
            )  # fmt: skip
        else:
            await connection.execute(
                _INSERT_CHUNKS, file.file_id, file.assistant_id, indexed.language, *columns
            )
        await connection.fetchval(
            _MARK_PROCESSED,
            file.file_id, len(chunks), indexed.characters, indexed.pages, indexed.language,
            *event.parameters(),
        )  # fmt: skip
    return True


async def store_failure(
    connection: asyncpg.Connection, file_id: str, reason: str, message: str, event: StagedEvent
) -> bool:
    """Mark a waiting file failed with its `file.failed`; False when it was not waiting."""
    stored = await connection.fetchval(_MARK_FAILED, file_id, reason, message, *event.parameters())
    return bool(stored)


async def embeddings_column_exists(connection: asyncpg.Connection) -> bool:
    """Whether the migration found pgvector (and added `chunks.embedding`)."""
    return bool(
        await connection.fetchval(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = "
            "'knowledge' AND table_name = 'chunks' AND column_name = 'embedding')"
        )
    )

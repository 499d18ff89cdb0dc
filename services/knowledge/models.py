"""Tables of the `knowledge` schema: an assistant's files, their original bytes, their chunks,
and which chunks each reply's prompt used.

Invariants the database enforces, not the code:
- a chunk exists once: (file_id, position) is the key, so a file indexed twice (a redelivered
  `file.uploaded`) cannot double its chunks;
- deleting a file deletes its bytes and chunks; deleting an assistant deletes its files, and
  deleting a reply its sources (foreign keys to the `chat` schema, created by the migration).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB, TSVECTOR
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import schema_metadata
from shared.outbox import outbox_table


class Base(DeclarativeBase):
    """Tables of the `knowledge` schema."""

    metadata = schema_metadata("knowledge")


outbox = outbox_table(Base.metadata)

MAX_FILE_NAME_LENGTH = 255


class FileStatus(StrEnum):
    UPLOADED = "uploaded"
    """Stored; waiting for a knowledge worker."""
    PROCESSED = "processed"
    FAILED = "failed"


class KnowledgeFile(Base):
    __tablename__ = "files"
    __table_args__ = (Index("ix_files_assistant_created", "assistant_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(14), primary_key=True)
    assistant_id: Mapped[str] = mapped_column(String(12))
    owner_id: Mapped[str] = mapped_column(String(16), index=True)
    name: Mapped[str] = mapped_column(String(MAX_FILE_NAME_LENGTH))
    content_type: Mapped[str] = mapped_column(String(100))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default=FileStatus.UPLOADED)
    failure_reason: Mapped[str | None] = mapped_column(String(32))
    failure_message: Mapped[str | None] = mapped_column(Text)
    chunk_count: Mapped[int | None] = mapped_column(Integer)
    char_count: Mapped[int | None] = mapped_column(Integer)
    page_count: Mapped[int | None] = mapped_column(Integer)
    language: Mapped[str | None] = mapped_column(String(64))
    """The text search configuration its chunks were indexed with (`english`, `simple`, ...)."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
    processed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class FileContent(Base):
    """The original bytes, apart from the metadata so listing files never reads them."""

    __tablename__ = "file_contents"

    file_id: Mapped[str] = mapped_column(
        String(14), ForeignKey("files.id", ondelete="CASCADE"), primary_key=True
    )
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Chunk(Base):
    """One overlapping piece of a file's text, with its full-text vector (and, where pgvector
    is installed, an `embedding vector` column the migration adds)."""

    __tablename__ = "chunks"
    __table_args__ = (
        Index("ix_chunks_tsv", "tsv", postgresql_using="gin"),
        Index("ix_chunks_assistant", "assistant_id"),
    )

    file_id: Mapped[str] = mapped_column(
        String(14), ForeignKey("files.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    assistant_id: Mapped[str] = mapped_column(String(12))
    page: Mapped[int | None] = mapped_column(Integer)
    content: Mapped[str] = mapped_column(Text)
    language: Mapped[str] = mapped_column(String(64))
    tsv: Mapped[Any] = mapped_column(TSVECTOR)


class ReplySource(Base):
    """The chunks a reply's prompt included, kept beside the reply (`chat.messages`)."""

    __tablename__ = "reply_sources"

    message_id: Mapped[str] = mapped_column(String(10), primary_key=True)
    sources: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


FILES = cast(Table, KnowledgeFile.__table__).fullname
FILE_CONTENTS = cast(Table, FileContent.__table__).fullname
CHUNKS = cast(Table, Chunk.__table__).fullname
REPLY_SOURCES = cast(Table, ReplySource.__table__).fullname
OUTBOX = outbox.fullname

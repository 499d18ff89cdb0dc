"""Turning a `file.uploaded` into an indexed file (`file.processed`) or a failed one
(`file.failed`, with a reason a person can act on).

Idempotent: the file's status is the arbiter. The chunks, the new status and the event are
written in one transaction, and only while the file is still `uploaded`; a redelivered event
(a worker killed mid-extraction) extracts again and writes once, a late duplicate writes
nothing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import openai
from sqlalchemy.ext.asyncio import AsyncEngine

from services.knowledge import embeddings, repository
from services.knowledge.models import FileStatus
from services.knowledge.sandbox import ExtractionFailed, ExtractionLimits, extract_in_child
from shared.db import driver_connection
from shared.events import FileFailed, FileProcessed, FileUploaded
from shared.outbox import Outbox, StagedEvent

log = logging.getLogger(__name__)

PRODUCER = "knowledge_worker"


@dataclass
class IndexingMetrics:
    in_flight: int = 0
    processed: int = 0
    failed: int = 0
    skipped: int = 0


@dataclass
class FileIndexer:
    engine: AsyncEngine
    outbox: Outbox
    limits: ExtractionLimits
    client: openai.AsyncOpenAI | None
    """Set when hybrid retrieval is on: chunks get embeddings."""
    embedding_model: str
    metrics: IndexingMetrics = field(default_factory=IndexingMetrics)

    async def index(self, event: FileUploaded) -> None:
        self.metrics.in_flight += 1
        try:
            await self._index(event)
        finally:
            self.metrics.in_flight -= 1

    async def _index(self, event: FileUploaded) -> None:
        started = time.monotonic()
        async with driver_connection(self.engine) as connection:
            file = await repository.load_file(connection, event.file_id)
        if file is None or file.status != FileStatus.UPLOADED:
            self.metrics.skipped += 1
            log.info("file already handled or deleted", extra={"file": event.file_id})
            return
        log.info("extracting", extra={"file": file.file_id, "bytes": len(file.data)})
        try:
            extracted = await extract_in_child(file.data, file.content_type, self.limits)
        except ExtractionFailed as failure:
            await self._fail(file, failure, started)
            return
        vectors = None
        if self.client is not None and extracted.chunks:
            # Outside any transaction: a slow embeddings service holds no database locks.
            vectors = await embeddings.embed(
                self.client, self.embedding_model, [c.content for c in extracted.chunks]
            )
        duration_ms = (time.monotonic() - started) * 1000
        staged = StagedEvent.of(
            FileProcessed(
                producer=PRODUCER,
                user_id=file.owner_id,
                correlation_id=file.file_id,
                file_id=file.file_id,
                assistant_id=file.assistant_id,
                chunks=len(extracted.chunks),
                characters=extracted.characters,
                pages=extracted.pages,
                duration_ms=duration_ms,
            )
        )
        indexed = repository.IndexedText(
            chunks=extracted.chunks,
            characters=extracted.characters,
            pages=extracted.pages,
            language=extracted.language,
            embeddings=vectors,
            embedding_model=self.embedding_model if vectors is not None else None,
        )
        async with driver_connection(self.engine) as connection:
            stored = await repository.store_index(connection, file, indexed, staged)
        if not stored:
            self.metrics.skipped += 1
            log.info("file changed while extracting; nothing stored", extra={"file": file.file_id})
            return
        await self.outbox.publish_committed([staged])
        self.metrics.processed += 1
        log.info(
            "file processed",
            extra={"file": file.file_id, "chunks": len(extracted.chunks), "ms": int(duration_ms)},
        )

    async def _fail(
        self, file: repository.PendingFile, failure: ExtractionFailed, started: float
    ) -> None:
        staged = StagedEvent.of(
            FileFailed(
                producer=PRODUCER,
                user_id=file.owner_id,
                correlation_id=file.file_id,
                file_id=file.file_id,
                assistant_id=file.assistant_id,
                reason=failure.reason,
                message=failure.message,
                duration_ms=(time.monotonic() - started) * 1000,
            )
        )
        async with driver_connection(self.engine) as connection:
            stored = await repository.store_failure(
                connection, file.file_id, failure.reason, failure.message, staged
            )
        if stored:
            await self.outbox.publish_committed([staged])
            self.metrics.failed += 1
        log.info("file failed", extra={"file": file.file_id, "reason": failure.reason})

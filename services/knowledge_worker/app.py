"""Composition root of a knowledge worker: HTTP for health/metrics, the runtime's queue consumer
for `knowledge.files`, FastStream for the topology and its events.

A process of its own rather than a task of the chat worker: extraction is CPU-heavy and
bursty (a batch of PDFs), and must never steal the event loop or the CPU that streams replies;
it also scales (and fails) independently.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any

import openai
from fastapi import FastAPI

from services.knowledge import models, repository
from services.knowledge.sandbox import ExtractionLimits
from services.knowledge_worker.handlers import file_handler
from services.knowledge_worker.service import FileIndexer
from services.knowledge_worker.settings import KnowledgeWorkerSettings
from shared.db import driver_connection
from shared.outbox import Outbox
from shared.runtime import ServiceRuntime
from shared.service_app import create_service_app

SERVICE = "knowledge_worker"


def create_app(settings: KnowledgeWorkerSettings | None = None) -> FastAPI:
    settings = settings or KnowledgeWorkerSettings()
    runtime = ServiceRuntime.build(SERVICE, settings)
    outbox = Outbox(models.outbox, runtime.sessions, runtime.publisher)
    limits = ExtractionLimits(
        timeout_s=settings.knowledge_extraction_timeout_s,
        memory_bytes=settings.knowledge_extraction_memory_mib * 2**20,
        max_pages=settings.knowledge_max_pages,
        max_unpacked_bytes=settings.knowledge_max_unpacked_mib * 2**20,
        max_characters=settings.knowledge_max_characters,
        chunk_chars=settings.knowledge_chunk_chars,
        chunk_overlap_chars=settings.knowledge_chunk_overlap_chars,
        default_language=settings.knowledge_default_language,
    )
    indexer = FileIndexer(
        engine=runtime.engine,
        outbox=outbox,
        limits=limits,
        client=None,
        embedding_model=settings.embedding_model,
    )
    files = runtime.consume(
        runtime.topology.knowledge_files.name,
        file_handler(indexer),
        prefetch=settings.knowledge_concurrency,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if settings.embedding_model:
            async with driver_connection(runtime.engine) as connection:
                hybrid = await repository.embeddings_column_exists(connection)
            if hybrid:
                indexer.client = openai.AsyncOpenAI(
                    base_url=settings.llm_base_url,
                    api_key=settings.llm_api_key or "not-needed",
                    max_retries=3,
                    timeout=60.0,
                )
        runtime.run_in_background(outbox.relay_forever(), "outbox-relay")
        await runtime.start()
        yield
        await runtime.stop()
        await outbox.drain_background()
        if indexer.client is not None:
            await indexer.client.close()

    app = create_service_app(
        title="ConvoAI knowledge worker",
        runtime=runtime,
        lifespan=lifespan,
        readiness={"files": files.check_connected},
        # It serves only health and metrics; no request of its own touches the database.
        database_outage_is_503=False,
        http_metrics=False,
    )

    @app.get("/metrics")
    async def metrics() -> dict[str, Any]:
        return {
            "instance": runtime.instance_id,
            "embeddings": indexer.client is not None,
            **asdict(indexer.metrics),
        }

    return app

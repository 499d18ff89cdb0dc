"""Composition root of a chat worker: HTTP for health/metrics, the runtime's queue consumer for
`chat.requests`, FastStream for the topology and the worker's events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI

from services.chat import models
from services.chat_worker.broadcast import FrameChannel
from services.chat_worker.handlers import request_handler
from services.chat_worker.knowledge import KnowledgeContext
from services.chat_worker.llm import create_client
from services.chat_worker.metrics import queue_depth_refresh, register_worker_collector
from services.chat_worker.model_endpoint import ModelEndpoint
from services.chat_worker.service import ChatReplies
from services.chat_worker.settings import ChatWorkerSettings
from shared.metrics import outbox_backlog
from shared.outbox import Outbox
from shared.runtime import ServiceRuntime
from shared.service_app import create_service_app

SERVICE = "chat_worker"


def create_app(settings: ChatWorkerSettings | None = None) -> FastAPI:
    settings = settings or ChatWorkerSettings()
    runtime = ServiceRuntime.build(SERVICE, settings, db_pool_size=settings.db_pool_size)
    outbox = Outbox(models.outbox, runtime.sessions, runtime.publisher)
    frames = FrameChannel(settings.amqp_url, runtime.topology, runtime.instance_id)
    replies = ChatReplies(
        settings=settings,
        engine=runtime.engine,
        sessions=runtime.sessions,
        outbox=outbox,
        frames=frames,
        client=create_client(settings),
    )
    model_endpoint = ModelEndpoint(replies.client, settings)
    replies.generation.knowledge = KnowledgeContext(
        engine=runtime.engine,
        client=replies.client,
        budget_tokens=settings.knowledge_budget_tokens,
        max_chunks=settings.knowledge_max_chunks,
        embedding_model=settings.embedding_model,
        min_similarity=settings.knowledge_min_similarity,
    )
    requests = runtime.consume(
        runtime.topology.chat_requests.name,
        request_handler(replies),
        prefetch=settings.prefetch,
        # No requests while their frames could not reach a client, e.g. after a broker outage
        # the request connection is back before the frame connection.
        wait_before_attaching=frames.wait_until_connected,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        assert replies.generation.knowledge is not None
        await replies.generation.knowledge.detect_mode()
        # Frames and control first: a request may arrive as soon as the broker starts.
        await frames.start(replies.on_command)
        # Not a runtime background task: replies finishing during shutdown still need it.
        ticker = asyncio.create_task(replies.tick_forever(), name="reply-ticker")
        runtime.run_in_background(outbox.relay_forever(), "outbox-relay")
        await runtime.start()
        # Not awaited: a slow or absent model endpoint must not delay the worker's start.
        runtime.run_in_background(model_endpoint.log_at_start(), "model-endpoint-check")
        yield
        # Stops consuming, lets in-flight replies finish (or return to the queue), disconnects.
        await runtime.stop()
        ticker.cancel()
        with suppress(asyncio.CancelledError):
            await ticker
        await outbox.drain_background()
        await frames.stop()
        await replies.client.close()

    app = create_service_app(
        title="ConvoAI chat worker",
        runtime=runtime,
        lifespan=lifespan,
        state={"replies": replies},
        readiness={
            "requests": requests.check_connected,
            "frames": frames.check_connected,
            "model": model_endpoint.check_ready,
        },
        # No request of its own touches the database, and it serves only health and metrics.
        database_outage_is_503=False,
        http_metrics=False,
        metrics_refresh=[outbox_backlog(outbox, "chat"), queue_depth_refresh(requests)],
        readiness_details=lambda: {
            "knowledge_retrieval": (
                replies.generation.knowledge.mode if replies.generation.knowledge else "off"
            )
        },
    )
    register_worker_collector(replies, frames)

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        """The counters as JSON, for tests and ad-hoc checks; Prometheus reads `/metrics`."""
        return {
            "instance": runtime.instance_id,
            **asdict(replies.metrics),
            "streaming": len(replies.active),
            "frames_published": frames.frames_published,
            "frames_dropped": frames.frames_dropped,
            "frames_pending": frames.pending_frames,
        }

    return app

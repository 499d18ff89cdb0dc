"""Composition root of a chat worker: HTTP for health/metrics, FastStream for `chat.requests`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.chat_worker.settings import ChatWorkerSettings
from shared.health import health_router
from shared.runtime import ServiceRuntime

SERVICE = "chat_worker"


def create_app(settings: ChatWorkerSettings | None = None) -> FastAPI:
    settings = settings or ChatWorkerSettings()
    runtime = ServiceRuntime.build(SERVICE, settings, prefetch=settings.prefetch)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        yield
        await runtime.stop()

    app = FastAPI(title="ConvoAI chat worker", lifespan=lifespan)
    app.state.runtime = runtime
    app.state.settings = settings
    app.include_router(
        health_router(
            SERVICE,
            runtime.instance_id,
            {"broker": runtime.check_broker, "database": runtime.check_database},
        )
    )
    return app

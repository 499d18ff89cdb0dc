"""Composition root of the analytics consumer: dashboard API and the `analytics.events` consumer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.analytics_consumer.settings import AnalyticsSettings
from shared.health import health_router
from shared.runtime import ServiceRuntime

SERVICE = "analytics_consumer"


def create_app(settings: AnalyticsSettings | None = None) -> FastAPI:
    settings = settings or AnalyticsSettings()
    runtime = ServiceRuntime.build(SERVICE, settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        yield
        await runtime.stop()

    app = FastAPI(title="ConvoAI analytics", lifespan=lifespan)
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

"""Composition root of the gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.gateway import models
from services.gateway.settings import GatewaySettings
from shared.health import health_router
from shared.outbox import Outbox
from shared.runtime import ServiceRuntime
from shared.security import TokenVerifier

SERVICE = "gateway"


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    runtime = ServiceRuntime.build(SERVICE, settings)
    outbox = Outbox(models.outbox, runtime.sessions, runtime.publisher)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        runtime.run_in_background(outbox.relay_forever(), "outbox-relay")
        yield
        await outbox.drain_background()
        await runtime.stop()

    app = FastAPI(title="ConvoAI gateway", lifespan=lifespan)
    app.state.runtime = runtime
    app.state.settings = settings
    app.state.outbox = outbox
    app.state.token_verifier = TokenVerifier.from_settings(settings)
    app.include_router(
        health_router(
            SERVICE,
            runtime.instance_id,
            {"broker": runtime.check_broker, "database": runtime.check_database},
        )
    )
    return app

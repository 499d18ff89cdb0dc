"""Composition root of the gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.chat import models
from services.gateway import api, ws
from services.gateway.context import Gateway
from services.gateway.fanout import StreamFanout
from services.gateway.rate_limit import MessageRateLimiter
from services.gateway.service import ChatService
from services.gateway.settings import GatewaySettings
from shared.health import answer_503_while_database_unavailable, health_router
from shared.http_metrics import install_http_metrics
from shared.outbox import Outbox
from shared.runtime import ServiceRuntime
from shared.security import TokenVerifier

SERVICE = "gateway"


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    runtime = ServiceRuntime.build(SERVICE, settings)
    outbox = Outbox(models.outbox, runtime.sessions, runtime.publisher)
    verifier = TokenVerifier.from_settings(settings)
    fanout = StreamFanout(settings.amqp_url, runtime.topology, runtime.instance_id)
    gateway = Gateway(
        settings=settings,
        chat=ChatService(
            runtime.engine,
            outbox,
            max_message_length=settings.max_message_length,
            rate_limiter=MessageRateLimiter(settings.messages_per_minute),
            anonymous_rate_limiter=MessageRateLimiter(settings.anonymous_messages_per_minute),
        ),
        fanout=fanout,
        verifier=verifier,
        outbox=outbox,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        await fanout.start()
        runtime.run_in_background(outbox.relay_forever(), "outbox-relay")
        yield
        await fanout.stop()
        await outbox.drain_background()
        await runtime.stop()

    async def check_stream() -> None:
        if not fanout.connected:
            raise ConnectionError("stream connection not open")

    app = FastAPI(title="ConvoAI gateway", lifespan=lifespan)
    app.state.runtime = runtime
    app.state.settings = settings
    app.state.outbox = outbox
    app.state.token_verifier = verifier
    app.state.gateway = gateway
    answer_503_while_database_unavailable(app)
    app.include_router(
        health_router(
            SERVICE,
            runtime.instance_id,
            {
                "broker": runtime.check_broker,
                "database": runtime.check_database,
                "stream": check_stream,
            },
        )
    )
    app.add_middleware(api.RequestBodyLimit, max_bytes=api.MAX_REQUEST_BYTES)
    api.install_error_handlers(app)
    app.include_router(api.router)
    app.include_router(ws.router)
    install_http_metrics(app, runtime)
    return app

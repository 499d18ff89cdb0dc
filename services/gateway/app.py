"""Composition root of the gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware import Middleware

from services.budgets import api as budgets_api
from services.budgets.release import release_stale_forever
from services.chat import models
from services.gateway import api, openai_api, ws
from services.gateway.context import Gateway
from services.gateway.fanout import StreamFanout
from services.gateway.rate_limit import MessageRateLimiter
from services.gateway.service import ChatService
from services.gateway.settings import GatewaySettings
from shared.outbox import Outbox
from shared.runtime import ServiceRuntime
from shared.security import TokenVerifier
from shared.service_app import create_service_app

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
        runtime.run_in_background(
            release_stale_forever(runtime.sessions, settings.reservation_ttl_s), "budget-release"
        )
        yield
        await fanout.stop()
        await outbox.drain_background()
        await runtime.stop()

    async def check_stream() -> None:
        if not fanout.connected:
            raise ConnectionError("stream connection not open")

    app = create_service_app(
        title="ConvoAI gateway",
        description="Conversations, messages and assistants over REST; live chat over the "
        "WebSocket `/ws`, whose frames, error and close codes and reconnect rules are described "
        "in `docs/websocket-protocol.md` of the ConvoAI repository.",
        runtime=runtime,
        lifespan=lifespan,
        state={"outbox": outbox, "token_verifier": verifier, "gateway": gateway},
        readiness={"stream": check_stream},
        routers=[api.router, openai_api.router, budgets_api.router, ws.router],
        middleware=[Middleware(api.RequestBodyLimit, max_bytes=api.MAX_REQUEST_BYTES)],
    )
    api.install_error_handlers(app)
    return app

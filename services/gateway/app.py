"""Composition root of the gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.budgets.release import release_stale_forever
from services.chat import models
from services.gateway import api, budgets_api, files_api, openai_api, ws
from services.gateway.account_erasure import AccountEraser
from services.gateway.admissions import AdmissionPolicy
from services.gateway.api_keys import ApiKeyDirectory
from services.gateway.context import Gateway
from services.gateway.fanout import StreamFanout
from services.gateway.model_access import ModelAccess, ServedModels
from services.gateway.open_sockets import OpenSockets
from services.gateway.service import ChatService
from services.gateway.settings import GatewaySettings
from services.gateway.webapp import install_webapp
from services.knowledge import models as knowledge_models
from services.knowledge.service import KnowledgeFiles, UploadLimits
from shared.asyncapi import asyncapi_router
from shared.metrics import outbox_backlog
from shared.outbox import Outbox
from shared.revocations import MAX_ACCESS_TOKEN_AGE_S, RevocationFeed, RevocationList
from shared.runtime import ServiceRuntime
from shared.security import TokenVerifier
from shared.service_app import create_service_app

SERVICE = "gateway"


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    settings = settings or GatewaySettings()
    runtime = ServiceRuntime.build(SERVICE, settings)
    outbox = Outbox(models.outbox, runtime.sessions, runtime.publisher)
    revocations = RevocationList(MAX_ACCESS_TOKEN_AGE_S)
    revocation_feed = RevocationFeed(
        settings.amqp_url, runtime.topology, revocations, history_s=MAX_ACCESS_TOKEN_AGE_S
    )
    verifier = TokenVerifier.from_settings(settings, revocations)
    sockets = OpenSockets(settings.max_sockets_per_user, settings.max_anonymous_sockets_per_address)
    eraser = AccountEraser(outbox)
    revocation_feed.add_listener(
        lambda event: sockets.revoke(str(event.user_id), event.occurred_at.timestamp())
    )
    revocation_feed.add_listener(eraser.on_revoked)
    api_keys = ApiKeyDirectory(settings.auth_url, revocations, cache_s=settings.api_key_cache_s)
    revocation_feed.add_listener(lambda event: api_keys.forget_user(str(event.user_id)))
    revocation_feed.add_key_listener(api_keys.forget_key)
    knowledge_outbox = Outbox(knowledge_models.outbox, runtime.sessions, runtime.publisher)
    fanout = StreamFanout(settings.amqp_url, runtime.topology, runtime.instance_id)
    admissions = AdmissionPolicy.from_settings(settings)
    model_access = ModelAccess(settings.allowed_models, settings.role_models)
    served_models = ServedModels(
        model_access, settings.llm_base_url, settings.llm_api_key, settings.models_refresh_s
    )
    gateway = Gateway(
        settings=settings,
        chat=ChatService(
            runtime.engine,
            outbox,
            max_message_length=settings.max_message_length,
            admissions=admissions,
            models=model_access,
        ),
        fanout=fanout,
        verifier=verifier,
        sockets=sockets,
        knowledge=KnowledgeFiles(
            runtime.engine,
            knowledge_outbox,
            UploadLimits(
                max_file_bytes=settings.knowledge_max_file_bytes,
                max_files_per_assistant=settings.knowledge_max_files_per_assistant,
                max_bytes_per_user=settings.knowledge_max_bytes_per_user,
            ),
            producer=SERVICE,
        ),
        outbox=outbox,
        admissions=admissions,
        api_keys=api_keys,
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if settings.models_source == "server":
            # Read once before serving (the settings' list stands in if this fails), then kept
            # up to date in the background.
            await served_models.refresh()
            runtime.run_in_background(served_models.refresh_forever(), "model-list-refresh")
        await runtime.start()
        await fanout.start()
        await revocation_feed.start()
        runtime.run_in_background(outbox.relay_forever(), "outbox-relay")
        runtime.run_in_background(
            release_stale_forever(runtime.sessions, settings.reservation_ttl_s), "budget-release"
        )
        runtime.run_in_background(knowledge_outbox.relay_forever(), "knowledge-outbox-relay")
        yield
        await revocation_feed.stop()
        await api_keys.close()
        await eraser.stop()
        await fanout.stop()
        await outbox.drain_background()
        await knowledge_outbox.drain_background()
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
        readiness={"stream": check_stream, "revocations": revocation_feed.check},
        routers=[
            api.router,
            files_api.router,
            openai_api.router,
            budgets_api.router,
            asyncapi_router(runtime.topology),
        ],
        metrics_refresh=[
            outbox_backlog(outbox, "chat"),
            outbox_backlog(knowledge_outbox, "knowledge"),
        ],
        body_limit_exempt=files_api.is_upload_path,
    )
    api.install_error_handlers(app)
    files_api.install_error_handlers(app)
    install_webapp(app, settings)
    # Added last, so it is the outermost of the app's own middleware.
    app.add_middleware(ws.ChatSocketDoor)
    return app

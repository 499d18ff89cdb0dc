"""Composition root of the auth service."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi import FastAPI

from services.auth import models
from services.auth.bootstrap import AdminBootstrapError, ensure_first_admin
from services.auth.endpoints import account_error_handler, router
from services.auth.passwords import PasswordHasher
from services.auth.rate_limit import RateLimiter
from services.auth.service import AccountError, AccountsFactory, LockoutPolicy
from services.auth.settings import AuthSettings
from services.auth.tokens import TokenIssuer
from shared.health import answer_503_while_database_unavailable, health_router
from shared.http_metrics import install_http_metrics
from shared.metrics import metrics_router, outbox_backlog
from shared.outbox import Outbox
from shared.runtime import ServiceRuntime
from shared.security import TokenVerifier

SERVICE = "auth"
PRUNE_INTERVAL_S = 600.0

log = logging.getLogger(__name__)


def build_accounts(settings: AuthSettings, outbox: Outbox) -> AccountsFactory:
    """Everything the auth rules need besides a session (shared by the app and the CLI)."""
    return AccountsFactory(
        outbox=outbox,
        passwords=PasswordHasher(
            settings.password_hash_memory_kib,
            settings.password_hash_time_cost,
            settings.password_hash_parallelism,
        ),
        issuer=TokenIssuer(
            settings.jwt_secret,
            settings.jwt_algorithm,
            settings.jwt_issuer,
            settings.jwt_audience,
            access_ttl=timedelta(seconds=settings.access_token_ttl_s),
            refresh_ttl=timedelta(seconds=settings.refresh_token_ttl_s),
        ),
        verifier=TokenVerifier.from_settings(settings),
        lockout=LockoutPolicy(
            threshold=settings.login_lockout_threshold,
            window=timedelta(seconds=settings.login_lockout_window_s),
        ),
    )


async def prune_forever(accounts: AccountsFactory) -> None:
    """Keep the lockout and refresh-token tables from growing without bound."""
    while True:
        try:
            async with accounts.unit_of_work() as uow:
                await uow.prune()
        except Exception as exc:
            log.warning("auth prune failed, retrying later", extra={"error": repr(exc)})
        await asyncio.sleep(PRUNE_INTERVAL_S)


def create_app(settings: AuthSettings | None = None) -> FastAPI:
    settings = settings or AuthSettings()
    runtime = ServiceRuntime.build(SERVICE, settings)
    outbox = Outbox(models.outbox, runtime.sessions, runtime.publisher)
    accounts = build_accounts(settings, outbox)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            await ensure_first_admin(accounts, settings)
        except AdminBootstrapError as exc:
            log.error("start-up refused: %s", exc)
            await runtime.stop()
            raise
        runtime.run_in_background(outbox.relay_forever(), "outbox-relay")
        runtime.run_in_background(prune_forever(accounts), "auth-prune")
        yield
        await outbox.drain_background()
        await runtime.stop()

    app = FastAPI(title="ConvoAI auth", lifespan=lifespan)
    app.state.runtime = runtime
    app.state.settings = settings
    app.state.outbox = outbox
    app.state.accounts = accounts
    app.state.token_verifier = accounts.verifier
    app.state.login_limiter = RateLimiter(settings.login_rate_limit, settings.login_rate_window_s)
    app.state.register_limiter = RateLimiter(
        settings.register_rate_limit, settings.register_rate_window_s
    )
    app.add_exception_handler(AccountError, account_error_handler)
    app.include_router(router)
    answer_503_while_database_unavailable(app)
    app.include_router(
        health_router(
            SERVICE,
            runtime.instance_id,
            {"broker": runtime.check_broker, "database": runtime.check_database},
        )
    )
    app.include_router(metrics_router([outbox_backlog(outbox, "auth")]))
    install_http_metrics(app, runtime)
    return app

"""Composition root of the auth service."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

from fastapi import FastAPI

from services.auth import api_keys, models
from services.auth.api import account_error_handler, router
from services.auth.bootstrap import AdminBootstrapError, ensure_first_admin
from services.auth.errors import AccountError
from services.auth.login import LockoutPolicy
from services.auth.passwords import PasswordHasher
from services.auth.service import AccountsFactory
from services.auth.settings import AuthSettings
from services.auth.tokens import TokenIssuer
from shared.metrics import outbox_backlog
from shared.outbox import Outbox
from shared.rate_limit import RateLimiter
from shared.runtime import ServiceRuntime
from shared.security import TokenVerifier
from shared.service_app import create_service_app

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
            account_threshold=settings.login_lockout_account_threshold,
            refresh_reuse_grace=timedelta(seconds=settings.refresh_reuse_grace_s),
        ),
    )


async def prune_forever(accounts: AccountsFactory) -> None:
    """Keep the lockout and refresh-token tables from growing without bound."""
    while True:
        try:
            async with accounts.unit_of_work() as uow:
                await uow.logins.prune()
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

    app = create_service_app(
        title="ConvoAI auth",
        runtime=runtime,
        lifespan=lifespan,
        state={
            "outbox": outbox,
            "accounts": accounts,
            "token_verifier": accounts.verifier,
            "login_limiter": RateLimiter(settings.login_rate_limit, settings.login_rate_window_s),
            "register_limiter": RateLimiter(
                settings.register_rate_limit, settings.register_rate_window_s
            ),
        },
        routers=[router, api_keys.router],
        metrics_refresh=[outbox_backlog(outbox, "auth")],
    )
    app.add_exception_handler(AccountError, account_error_handler)
    return app

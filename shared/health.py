"""`GET /health` (liveness) and `GET /ready` (dependencies) for every service, and the 503 a
request gets while the database is unavailable."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import asyncpg
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from shared.db import is_database_unavailable
from shared.input_guards import is_unstorable_text, unstorable_text_response
from shared.logging import redact

log = logging.getLogger(__name__)

ReadinessCheck = Callable[[], Awaitable[None]]


class NotReady(RuntimeError):
    """A readiness check's failure whose message is meant for the operator (it names what is
    wrong and where); other exceptions show only their type."""


READY_CHECK_TIMEOUT_S = 3.0


def health_router(
    service: str,
    instance_id: str,
    checks: Mapping[str, ReadinessCheck],
    details: Callable[[], dict[str, Any]] | None = None,
) -> APIRouter:
    """`details` adds what an operator wants to see next to the checks (e.g. a mode)."""
    router = APIRouter(tags=["health"])

    @router.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "service": service, "instance": instance_id}

    @router.get("/ready")
    async def ready() -> JSONResponse:
        """503 when any dependency this process needs to do its job fails its check; each
        failure says why (e.g. `unavailable: ConnectionError: broker not connected`)."""
        results: dict[str, str] = {}
        for name, check in checks.items():
            try:
                await asyncio.wait_for(check(), READY_CHECK_TIMEOUT_S)
                results[name] = "ok"
            except TimeoutError:
                results[name] = f"unavailable: no answer within {READY_CHECK_TIMEOUT_S:g} s"
            except NotReady as exc:
                results[name] = f"unavailable: {exc}"
            except Exception as exc:
                results[name] = f"unavailable: {_reason(exc)}"
        ok = all(v == "ok" for v in results.values())
        body: dict[str, Any] = {
            "status": "ok" if ok else "unavailable",
            "service": service,
            "checks": results,
        }
        if details is not None:
            body["details"] = details()
        return JSONResponse(body, status_code=200 if ok else 503)

    return router


def _reason(exc: BaseException) -> str:
    """The exception's type and first line, URLs' passwords redacted, bounded in length."""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return redact(text)[:300]


DATABASE_RETRY_AFTER_S = 1


def answer_503_while_database_unavailable(app: FastAPI) -> None:
    """A request that fails because PostgreSQL is unreachable or busy (or a connection to a
    backing service is refused) gets 503 with Retry-After — the client may simply retry —
    not a 500; other errors stay 500s."""

    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        if is_unstorable_text(exc):
            return unstorable_text_response(request)
        if not is_database_unavailable(exc):
            raise exc
        log.warning("request failed: dependency unavailable", extra={"error": repr(exc)})
        return JSONResponse(
            {"detail": "service temporarily unavailable; retry shortly"},
            status_code=503,
            headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)},
        )

    for error in (DBAPIError, PoolTimeoutError, asyncpg.PostgresError, OSError):
        app.add_exception_handler(error, unavailable)

"""`GET /health` (liveness) and `GET /ready` (dependencies) for every service."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping

from fastapi import APIRouter
from fastapi.responses import JSONResponse

ReadinessCheck = Callable[[], Awaitable[None]]

READY_CHECK_TIMEOUT_S = 3.0


def health_router(
    service: str, instance_id: str, checks: Mapping[str, ReadinessCheck]
) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "service": service, "instance": instance_id}

    @router.get("/ready")
    async def ready() -> JSONResponse:
        results: dict[str, str] = {}
        for name, check in checks.items():
            try:
                await asyncio.wait_for(check(), READY_CHECK_TIMEOUT_S)
                results[name] = "ok"
            except Exception as exc:
                results[name] = f"unavailable: {type(exc).__name__}"
        ok = all(v == "ok" for v in results.values())
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", "service": service, "checks": results},
            status_code=200 if ok else 503,
        )

    return router

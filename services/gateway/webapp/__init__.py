"""The browser app served by the gateway at `/`: static files, the session cookie, and one-origin
access to the auth and analytics APIs (the same URL layout deploy/nginx.conf gives)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import APIRouter, FastAPI

from services.gateway.settings import GatewaySettings
from services.gateway.webapp import proxy, session, site

UPSTREAM_TIMEOUT_S = 15.0


def install_webapp(app: FastAPI, settings: GatewaySettings) -> None:
    """Add the web app's routes; the API's routes keep precedence (they are added first)."""
    upstream = httpx.AsyncClient(timeout=UPSTREAM_TIMEOUT_S)

    @asynccontextmanager
    async def close_upstream(_app: FastAPI) -> AsyncIterator[None]:
        yield
        await upstream.aclose()

    app.state.webapp = proxy.Upstreams(
        client=upstream,
        auth_url=settings.auth_url.rstrip("/"),
        analytics_url=settings.analytics_url.rstrip("/"),
        allowed_origins=frozenset(settings.allowed_origins),
    )
    app.include_router(APIRouter(lifespan=close_upstream))
    app.include_router(session.router)
    app.include_router(proxy.router)
    site.mount(app)

"""Forwards the browser's auth and analytics calls to those services, under the paths
deploy/nginx.conf routes to them, so the app talks to one origin in every setup: one
Content-Security-Policy `connect-src 'self'`, no CORS on three services, and a refresh cookie
the gateway can hold."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import httpx
from fastapi import APIRouter, Request, Response, status
from fastapi.responses import JSONResponse

log = logging.getLogger(__name__)

FORWARDED_REQUEST_HEADERS = ("authorization", "content-type", "accept", "user-agent")
FORWARDED_RESPONSE_HEADERS = ("content-type", "retry-after", "www-authenticate")
METHODS = ["GET", "POST", "PATCH", "DELETE"]


@dataclass(frozen=True)
class Upstreams:
    client: httpx.AsyncClient
    auth_url: str
    analytics_url: str
    allowed_origins: frozenset[str]


def upstreams(request: Request) -> Upstreams:
    found: Upstreams = request.app.state.webapp
    return found


def forwarded_headers(request: Request) -> dict[str, str]:
    """The caller's headers the service needs, plus who the caller is (X-Forwarded-For)."""
    headers = {k: v for k in FORWARDED_REQUEST_HEADERS if (v := request.headers.get(k))}
    client = request.client.host if request.client else None
    if client:
        earlier = request.headers.get("x-forwarded-for")
        headers["x-forwarded-for"] = f"{earlier}, {client}" if earlier else client
    headers["x-forwarded-proto"] = request.url.scheme
    return headers


async def forward(request: Request, url: str) -> Response:
    if any(segment in (".", "..") for segment in request.url.path.split("/")):
        # The upstream would resolve them: /auth/../metrics must not reach auth's /metrics.
        return JSONResponse({"detail": "Not Found"}, status_code=status.HTTP_404_NOT_FOUND)
    try:
        answer = await upstreams(request).client.request(
            request.method,
            url,
            params=request.query_params,
            content=await request.body(),
            headers=forwarded_headers(request),
        )
    except httpx.HTTPError as exc:
        log.warning("upstream unreachable", extra={"url": url, "error": repr(exc)})
        return JSONResponse(
            {"detail": "Service unavailable"},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "1"},
        )
    headers = {k: v for k in FORWARDED_RESPONSE_HEADERS if (v := answer.headers.get(k))}
    return Response(answer.content, status_code=answer.status_code, headers=headers)


router = APIRouter(include_in_schema=False)


@router.api_route("/auth/{path:path}", methods=METHODS)
async def auth_api(path: str, request: Request) -> Response:
    return await forward(request, f"{upstreams(request).auth_url}/auth/{path}")


@router.api_route("/users/{path:path}", methods=METHODS)
async def users_api(path: str, request: Request) -> Response:
    return await forward(request, f"{upstreams(request).auth_url}/users/{path}")


@router.api_route("/api/v1/analytics/{path:path}", methods=METHODS)
async def analytics_api(path: str, request: Request) -> Response:
    return await forward(request, f"{upstreams(request).analytics_url}/api/v1/analytics/{path}")

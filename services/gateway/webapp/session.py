"""The web app's session: the refresh token lives in an httpOnly SameSite=Strict cookie that
page scripts cannot read, so an injected script could steal at most a short-lived access token
(kept in memory only); the cookie is sent only to these routes."""

from __future__ import annotations

import logging

import httpx
from fastapi import APIRouter, Request, Response, status
from fastapi.responses import JSONResponse

from services.gateway.webapp.proxy import forwarded_headers, upstreams

log = logging.getLogger(__name__)

COOKIE = "convoai_refresh"
COOKIE_PATH = "/webapp/session"

router = APIRouter(prefix=COOKIE_PATH, include_in_schema=False)


def _cross_site(request: Request) -> bool:
    """A request from another page: the cookie is SameSite=Strict, this checks it twice."""
    origin = request.headers.get("origin")
    return origin is not None and origin not in upstreams(request).allowed_origins


def _refused(detail: str, code: int = status.HTTP_403_FORBIDDEN) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=code)


def _unavailable() -> JSONResponse:
    return JSONResponse(
        {"detail": "Sign-in is unavailable; try again shortly"},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": "1"},
    )


def _session_answer(request: Request, answer: httpx.Response) -> Response:
    """The access token to the page, the refresh token into the cookie."""
    if answer.status_code != status.HTTP_200_OK:
        response = Response(
            answer.content,
            status_code=answer.status_code,
            headers={k: v for k in ("content-type", "retry-after") if (v := answer.headers.get(k))},
        )
        if answer.status_code == status.HTTP_401_UNAUTHORIZED:
            response.delete_cookie(COOKIE, path=COOKIE_PATH)
        return response
    tokens = answer.json()
    response = JSONResponse(
        {
            "access_token": tokens["access_token"],
            "token_type": "bearer",
            "expires_in": tokens["expires_in"],
        },
        headers={"cache-control": "no-store"},
    )
    response.set_cookie(
        COOKIE,
        tokens["refresh_token"],
        path=COOKIE_PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        max_age=None,
    )
    return response


@router.post("")
async def sign_in(request: Request) -> Response:
    """Body: the OAuth2 password form, as auth's `POST /auth/token` takes it."""
    if _cross_site(request):
        return _refused("Cross-site sign-in refused")
    up = upstreams(request)
    try:
        answer = await up.client.post(
            f"{up.auth_url}/auth/token",
            content=await request.body(),
            headers=forwarded_headers(request),
        )
    except httpx.HTTPError as exc:
        log.warning("sign-in: auth unreachable", extra={"error": repr(exc)})
        return _unavailable()
    return _session_answer(request, answer)


@router.post("/refresh")
async def refresh(request: Request) -> Response:
    """A new access token from the cookie's refresh token (auth rotates it)."""
    if _cross_site(request):
        return _refused("Cross-site refresh refused")
    token = request.cookies.get(COOKIE)
    if not token:
        return _refused("Not signed in", status.HTTP_401_UNAUTHORIZED)
    up = upstreams(request)
    try:
        answer = await up.client.post(
            f"{up.auth_url}/auth/refresh",
            json={"refresh_token": token},
            headers=forwarded_headers(request),
        )
    except httpx.HTTPError as exc:
        log.warning("refresh: auth unreachable", extra={"error": repr(exc)})
        return _unavailable()
    return _session_answer(request, answer)


@router.delete("", status_code=status.HTTP_204_NO_CONTENT)
async def sign_out(request: Request) -> Response:
    if _cross_site(request):
        return _refused("Cross-site sign-out refused")
    token = request.cookies.get(COOKIE)
    if token:
        up = upstreams(request)
        try:
            await up.client.post(
                f"{up.auth_url}/auth/logout",
                json={"refresh_token": token},
                headers=forwarded_headers(request),
            )
        except httpx.HTTPError as exc:
            # The cookie goes anyway; the token expires on its own.
            log.warning("sign-out: auth unreachable", extra={"error": repr(exc)})
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    response.delete_cookie(COOKIE, path=COOKIE_PATH)
    return response

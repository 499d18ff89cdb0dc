"""What every HTTP service does with hostile input before and after its routes see it.

- `BodySizeLimit` refuses a body larger than the limit while it streams in, before anything
  parses it and before authentication: a declared `Content-Length` over the limit is answered at
  once, and a chunked body is counted as it arrives, so memory stays flat whatever is sent.
- Validation errors never echo the input (a password typed into the wrong field would come back
  in the body and go into logs), and every 422 has the documented `HTTPValidationError` shape.
- Text PostgreSQL cannot store (NUL, unpaired UTF-16 surrogates) is a 422, not a 500 with a
  traceback carrying the statement's parameters.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
UNSTORABLE_TEXT = "text must not contain NUL characters or unpaired surrogates"

# invalid byte sequence / character not in repertoire / untranslatable character
_UNSTORABLE_TEXT_SQLSTATES = frozenset({"22021", "22P05"})


class BodyTooLarge(Exception):
    """Raised into the app by the wrapped `receive` once the body passes the limit."""


class BodySizeLimit:
    """Answers 413 to a request body larger than `max_bytes`, counted while it streams."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int = DEFAULT_MAX_BODY_BYTES,
        exempt: Callable[[str], bool] | None = None,
    ) -> None:
        self._app = app
        self._max_bytes = max_bytes
        self._exempt = exempt
        """Paths that enforce a (larger) limit of their own while they stream, e.g. uploads."""

    def _refusal(self) -> JSONResponse:
        return JSONResponse(
            {"detail": f"Request body larger than {self._max_bytes} bytes"},
            status_code=status.HTTP_413_CONTENT_TOO_LARGE,
            headers={"Connection": "close"},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self._exempt is not None and self._exempt(scope["path"])):
            await self._app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > self._max_bytes):
                await self._refusal()(scope, receive, send)
                return

        received = 0
        exceeded = False
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                raise BodyTooLarge()
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self._max_bytes:
                    exceeded = True
                    raise BodyTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            # Whatever the app made of a body cut short (a 400 for unparsable JSON, say), the
            # client is told the real reason.
            if exceeded:
                return
            response_started = True
            await send(message)

        with contextlib.suppress(BodyTooLarge):
            await self._app(scope, limited_receive, guarded_send)
        if exceeded and not response_started:
            log.warning(
                "request body refused: too large",
                extra={"path": scope.get("path"), "limit": self._max_bytes},
            )
            await self._refusal()(scope, receive, send)


def _error_entries(errors: Sequence[Any]) -> list[dict[str, Any]]:
    return [{"type": e["type"], "loc": list(e["loc"]), "msg": e["msg"]} for e in errors]


def unprocessable(message: str, loc: Sequence[str | int] = ("body",)) -> JSONResponse:
    """A 422 in the documented `HTTPValidationError` shape, for rules checked past the schema."""
    return JSONResponse(
        {"detail": [{"type": "value_error", "loc": list(loc), "msg": message}]},
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
    )


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse(
        {"detail": _error_entries(exc.errors())},
        status_code=status.HTTP_422_UNPROCESSABLE_CONTENT,
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == status.HTTP_422_UNPROCESSABLE_CONTENT and isinstance(exc.detail, str):
        return unprocessable(exc.detail, ("query",))
    headers = getattr(exc, "headers", None)
    if exc.status_code in (status.HTTP_204_NO_CONTENT, status.HTTP_304_NOT_MODIFIED):
        return JSONResponse(None, status_code=exc.status_code, headers=headers)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)


def is_unstorable_text(exc: BaseException) -> bool:
    """Whether `exc` is PostgreSQL (or its driver) refusing text: NUL or a lone surrogate."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, UnicodeEncodeError):
            return True
        orig = current.orig if isinstance(current, DBAPIError) else current
        sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
        if sqlstate in _UNSTORABLE_TEXT_SQLSTATES:
            return True
        current = current.__cause__ or current.__context__
    return False


def has_unstorable_text(text: str) -> bool:
    """NUL or an unpaired surrogate: text that cannot be stored or sent as UTF-8."""
    if "\x00" in text:
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def unstorable_text_response(request: Request) -> JSONResponse:
    """The answer to a request whose text PostgreSQL refused (see `is_unstorable_text`)."""
    # One line, no traceback: the driver's message quotes the offending value.
    log.info("request refused: unstorable text", extra={"path": request.url.path})
    return unprocessable(UNSTORABLE_TEXT)


async def _unstorable_text(request: Request, exc: Exception) -> JSONResponse:
    return unstorable_text_response(request)


def install_input_guards(
    app: FastAPI,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    exempt: Callable[[str], bool] | None = None,
) -> None:
    """Body limit, input-free 422 bodies and unstorable text as 422, on one service's app."""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    # A lone surrogate failing to encode in a response; the database's refusals of such text
    # arrive through `shared.health.answer_503_while_database_unavailable`, which owns DBAPIError.
    app.add_exception_handler(UnicodeEncodeError, _unstorable_text)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes, exempt=exempt)
    _document_input_free_422s(app)


def _document_input_free_422s(app: FastAPI) -> None:
    """The OpenAPI document shows the 422 the service sends: FastAPI's `ValidationError`
    schema offers `input` and `ctx`, which these bodies never carry."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schemas = build().get("components", {}).get("schemas", {})
            fields = schemas.get("ValidationError", {}).get("properties", {})
            for echoed in ("input", "ctx"):
                fields.pop(echoed, None)
        return app.openapi_schema or build()

    app.openapi = openapi  # type: ignore[method-assign]

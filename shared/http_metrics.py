"""HTTP usage metrics: each answered request becomes a record in a batched `http.request.completed`.

The middleware only appends to a bounded in-memory buffer; a background flusher publishes the
buffer in batches. When the broker is slow or down the buffer fills and further records are
dropped and counted (`HttpMetricsRecorder.dropped`) — a request never waits for the broker.
Routes are recorded by template (`/conversations/{conversation_id}`), never by raw path, so ids
never leak into metrics and the number of distinct routes stays bounded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.events import HttpRequestCompleted, HttpRequestRecord
from shared.metrics import observe_http_request
from shared.runtime import ServiceRuntime

log = logging.getLogger(__name__)

UNMATCHED_ROUTE = "<unmatched>"
"""Route of a request no route matched (404s): raw paths would let clients flood the metrics."""
DEFAULT_EXCLUDED_ROUTES = frozenset({"/health", "/ready", "/metrics"})
"""Probes and scrapes poll every few seconds; counting them would drown real traffic."""


class HttpMetricsRecorder:
    """Bounded buffer of request records and the loop that publishes them in batches."""

    def __init__(
        self,
        service: str,
        publish: Callable[[HttpRequestCompleted], Any],
        *,
        max_buffer: int = 10_000,
        batch_size: int = 500,
        flush_interval_s: float = 1.0,
        publish_timeout_s: float = 5.0,
    ) -> None:
        self.service = service
        self._publish = publish
        self._buffer: deque[HttpRequestRecord] = deque()
        self._max_buffer = max_buffer
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._publish_timeout_s = publish_timeout_s
        self._wake = asyncio.Event()
        self.recorded = 0
        self.dropped = 0
        self.published = 0

    def record(
        self, route: str, method: str, status: int, duration_ms: float, user_id: str | None
    ) -> None:
        """Never blocks: a full buffer drops the record and counts it."""
        if len(self._buffer) >= self._max_buffer:
            self.dropped += 1
            return
        self._buffer.append(
            HttpRequestRecord(
                route=route,
                method=method,
                status=status,
                duration_ms=round(duration_ms, 3),
                user_id=user_id,
                occurred_at=datetime.now(UTC),
            )
        )
        self.recorded += 1
        if len(self._buffer) >= self._batch_size:
            self._wake.set()

    async def flush(self) -> None:
        """Publish everything buffered now; a failed batch is dropped and counted."""
        while self._buffer:
            size = min(len(self._buffer), self._batch_size)
            batch = [self._buffer.popleft() for _ in range(size)]
            event = HttpRequestCompleted(
                producer=self.service, service=self.service, requests=batch
            )
            try:
                await asyncio.wait_for(self._publish(event), self._publish_timeout_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.dropped += len(batch)
                log.warning(
                    "http metrics dropped, broker unavailable",
                    extra={"records": len(batch), "error": type(exc).__name__},
                )
            else:
                self.published += len(batch)

    async def run(self) -> None:
        while True:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._flush_interval_s)
            self._wake.clear()
            await self.flush()


def route_template(scope: Scope) -> str:
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if not isinstance(template, str):
        return UNMATCHED_ROUTE
    return f"{scope.get('root_path', '')}{template}" or "/"


class HttpMetricsMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware): adds no task or copy to the request path.

    Every request is counted for Prometheus; `recorder` (None when the events are disabled)
    also turns it into an `http.request.completed` record."""

    def __init__(
        self,
        app: ASGIApp,
        recorder: HttpMetricsRecorder | None,
        excluded_routes: frozenset[str] = DEFAULT_EXCLUDED_ROUTES,
    ) -> None:
        self.app = app
        self.recorder = recorder
        self.excluded_routes = excluded_routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status_code = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = route_template(scope)
            if route not in self.excluded_routes:
                duration_s = time.perf_counter() - started
                method = scope.get("method", "GET")
                observe_http_request(route, method, status_code, duration_s)
            if route not in self.excluded_routes and self.recorder is not None:
                state = scope.get("state") or {}
                user_id = state.get("user_id") if isinstance(state, dict) else None
                self.recorder.record(
                    route,
                    method,
                    status_code,
                    duration_s * 1000,
                    user_id if isinstance(user_id, str) else None,
                )


def install_http_metrics(app: FastAPI, runtime: ServiceRuntime) -> HttpMetricsRecorder | None:
    """Record every HTTP request of `app` and publish batches through `runtime`'s publisher.

    Call it in `create_app`, after the app (with its lifespan) exists and before it serves. The
    flusher starts once the app's own lifespan has started the runtime, and makes a last flush
    at shutdown before the runtime disconnects. The events are disabled by
    `CONVOAI_HTTP_METRICS_ENABLED=false`; the Prometheus counts at `/metrics` stay.
    """
    if not runtime.settings.http_metrics_enabled:
        app.add_middleware(HttpMetricsMiddleware, recorder=None)
        return None
    recorder = HttpMetricsRecorder(runtime.service, runtime.publisher.publish)
    app.add_middleware(HttpMetricsMiddleware, recorder=recorder)
    inner_lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan_with_flusher(app_: Any) -> AsyncIterator[Any]:
        async with inner_lifespan(app_) as state:
            flusher = asyncio.create_task(recorder.run(), name="http-metrics-flusher")
            try:
                yield state
            finally:
                flusher.cancel()
                with suppress(asyncio.CancelledError):
                    await flusher
                with suppress(Exception):
                    await asyncio.wait_for(recorder.flush(), 5.0)

    app.router.lifespan_context = lifespan_with_flusher
    app.state.http_metrics = recorder
    return recorder

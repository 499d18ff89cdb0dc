"""Prometheus `/metrics` for every process, and the metrics every HTTP service shares.

Each service defines its own metrics in `services/<service>/metrics.py`; they all live in the
default registry, which `GET /metrics` renders (with the client's process and Python metrics).
Every service runs as one process per replica (`convoai serve` starts one uvicorn worker), so
no multiprocess mode is needed: Prometheus tells replicas apart by their scrape target.

Labels stay bounded: route templates (never raw paths), frame types and codes from closed sets,
never user, conversation or message ids.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from shared.outbox import Outbox

log = logging.getLogger(__name__)

Refresh = Callable[[], Awaitable[None]]
"""Updates gauges that need I/O (a database count) right before a scrape renders them."""

REFRESH_TIMEOUT_S = 2.0

HTTP_REQUESTS = Counter(
    "convoai_http_requests",
    "HTTP requests answered, by route template, method and status",
    ["route", "method", "status"],
)
HTTP_REQUEST_DURATION = Histogram(
    "convoai_http_request_duration_seconds",
    "Time to answer an HTTP request, by route template",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)


BROKER_RECONNECTS = Counter(
    "convoai_broker_reconnects",
    "Broker connections lost (and then re-established by the process), by connection",
    ["connection"],
)


def observe_http_request(route: str, method: str, status: int, duration_s: float) -> None:
    HTTP_REQUESTS.labels(route, method, str(status)).inc()
    HTTP_REQUEST_DURATION.labels(route, method).observe(duration_s)


def metrics_router(refresh: Iterable[Refresh] = ()) -> APIRouter:
    """`GET /metrics` in the Prometheus text format, after running each `refresh`."""
    router = APIRouter(tags=["health"])
    refreshers = tuple(refresh)

    @router.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        for update in refreshers:
            try:
                await asyncio.wait_for(update(), REFRESH_TIMEOUT_S)
            except Exception as exc:
                # A gauge that cannot be read keeps its last value; the scrape still answers.
                log.warning("metrics refresh failed", extra={"error": repr(exc)})
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router


OUTBOX_PENDING = Gauge(
    "convoai_outbox_pending_rows", "Events stored in the outbox and not yet published", ["schema"]
)
OUTBOX_OLDEST_AGE = Gauge(
    "convoai_outbox_oldest_age_seconds",
    "Age of the oldest unpublished outbox row (lease moves reset it)",
    ["schema"],
)


def outbox_backlog(outbox: Outbox, schema: str) -> Refresh:
    """A refresh reading `outbox`'s backlog at scrape time (no loop runs between scrapes)."""

    async def refresh() -> None:
        pending, oldest_age_s = await outbox.backlog()
        OUTBOX_PENDING.labels(schema).set(pending)
        OUTBOX_OLDEST_AGE.labels(schema).set(oldest_age_s)

    return refresh

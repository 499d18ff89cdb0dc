"""The HTTP metrics middleware records route templates and never makes a request wait."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI, HTTPException, Request

from shared.events import HttpRequestCompleted
from shared.http_metrics import UNMATCHED_ROUTE, HttpMetricsMiddleware, HttpMetricsRecorder
from tests.analytics_consumer.conftest import eventually


class Published:
    def __init__(self) -> None:
        self.events: list[HttpRequestCompleted] = []

    async def __call__(self, event: HttpRequestCompleted) -> None:
        self.events.append(event)

    @property
    def records(self) -> list[tuple[str, str, int, str | None]]:
        return [(r.route, r.method, r.status, r.user_id) for e in self.events for r in e.requests]


def _app(recorder: HttpMetricsRecorder) -> FastAPI:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int, request: Request) -> dict[str, int]:
        request.state.user_id = "u-42"
        return {"id": item_id}

    @app.get("/broken")
    async def broken() -> None:
        raise HTTPException(503, "down")

    @app.get("/crash")
    async def crash() -> None:
        raise RuntimeError("bug")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    app.add_middleware(HttpMetricsMiddleware, recorder=recorder)
    return app


async def test_records_route_templates_status_and_user():
    published = Published()
    recorder = HttpMetricsRecorder("svc", published)
    transport = httpx.ASGITransport(app=_app(recorder), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/items/7")).status_code == 200
        assert (await client.get("/items/8")).status_code == 200
        assert (await client.get("/items/not-a-number")).status_code == 422
        assert (await client.get("/broken")).status_code == 503
        assert (await client.get("/crash")).status_code == 500
        assert (await client.get("/no/such/path/123")).status_code == 404
        assert (await client.get("/health")).status_code == 200
    await recorder.flush()
    assert published.records == [
        ("/items/{item_id}", "GET", 200, "u-42"),
        ("/items/{item_id}", "GET", 200, "u-42"),
        ("/items/{item_id}", "GET", 422, None),
        ("/broken", "GET", 503, None),
        ("/crash", "GET", 500, None),
        (UNMATCHED_ROUTE, "GET", 404, None),
    ]
    assert {e.service for e in published.events} == {"svc"}


async def test_full_buffer_drops_and_counts_instead_of_blocking():
    recorder = HttpMetricsRecorder("svc", Published(), max_buffer=100, batch_size=10)
    # `record` is synchronous: it cannot wait for anything; what is left to show is the count.
    for _ in range(1000):
        recorder.record("/x", "GET", 200, 1.0, None)
    assert (recorder.recorded, recorder.dropped) == (100, 900)


async def test_requests_complete_while_a_publish_hangs():
    publishing = asyncio.Event()
    answered = asyncio.Event()

    async def hanging_publish(_event: HttpRequestCompleted) -> None:
        publishing.set()
        await asyncio.Event().wait()  # a broker that never answers
        answered.set()

    recorder = HttpMetricsRecorder(
        "svc",
        hanging_publish,
        max_buffer=50,
        batch_size=20,
        flush_interval_s=3600,  # only a full batch wakes the flusher: counts are exact
        publish_timeout_s=3600,
    )
    flusher = asyncio.create_task(recorder.run())
    try:
        transport = httpx.ASGITransport(app=_app(recorder))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for i in range(20):
                assert (await client.get(f"/items/{i}")).status_code == 200
            async with asyncio.timeout(5):
                await publishing.wait()
            # Every one of these completes while the first batch's publish is still pending.
            for i in range(60):
                assert (await client.get(f"/items/{i}")).status_code == 200
        assert not answered.is_set()
        assert recorder.published == 0
        assert (recorder.recorded, recorder.dropped) == (70, 10)  # 20 in flight, 50 buffered
    finally:
        flusher.cancel()


async def test_a_publish_that_times_out_drops_its_batch_and_counts_it():
    async def hanging_publish(_event: HttpRequestCompleted) -> None:
        await asyncio.Event().wait()

    recorder = HttpMetricsRecorder(
        "svc", hanging_publish, max_buffer=50, batch_size=20, publish_timeout_s=0.01
    )
    for _ in range(30):
        recorder.record("/x", "GET", 200, 1.0, None)
    await recorder.flush()
    assert (recorder.published, recorder.dropped) == (0, 30)


@pytest.mark.e2e
async def test_service_reports_its_own_api_usage(stack):
    process = stack.start_consumer(CONVOAI_HTTP_METRICS_ENABLED="true")
    with stack.client(process, "admin") as admin, stack.client(process) as anonymous:
        for _ in range(3):
            assert admin.get("/summary").status_code == 200
        for _ in range(2):
            assert anonymous.get("/summary").status_code == 401
        assert admin.get("/daily-stats", params={"days": 0}).status_code == 422
        assert httpx.get(f"{process.url}/health").status_code == 200

        def summary_usage() -> dict | None:
            rows = admin.get("/api-usage", params={"service": "analytics_consumer"}).json()
            by_route = {(r["route"], r["method"]): r for r in rows["items"]}
            row = by_route.get(("/api/v1/analytics/summary", "GET"))
            return by_route if row and row["calls"] == 5 else None

        async def poll() -> dict | None:
            return await asyncio.to_thread(summary_usage)

        by_route = await eventually(poll, timeout_s=20, message="summary calls not reported")
    summary = by_route[("/api/v1/analytics/summary", "GET")]
    assert (summary["client_errors"], summary["server_errors"]) == (2, 0)
    assert by_route[("/api/v1/analytics/daily-stats", "GET")]["client_errors"] == 1
    assert not any(route == "/health" for route, _ in by_route)

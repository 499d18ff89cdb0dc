"""`/metrics` of every process counts the work done, and its labels stay bounded."""

from __future__ import annotations

import asyncio
import secrets
import time

import httpx
import pytest

from tests.gateway.conftest import expected_reply_text, open_socket
from tests.observability.conftest import ObservedPlatform, Samples, scrape, value

pytestmark = pytest.mark.e2e

TURNS = 3


async def wait_for_metric(process, condition, timeout_s: float = 20.0) -> Samples:
    deadline = time.monotonic() + timeout_s
    while True:
        samples = await asyncio.to_thread(scrape, process)
        if condition(samples) or time.monotonic() > deadline:
            return samples
        await asyncio.sleep(0.1)


async def test_metrics_count_the_work_done(observed: ObservedPlatform) -> None:
    gateway_before = scrape(observed.gateway)
    worker_before = scrape(observed.worker)
    analytics_before = scrape(observed.analytics)

    user = observed.new_user()
    socket = await open_socket(observed.gateway, user)
    frames_received = 1  # `ready`
    try:
        started = await socket.request(
            {"type": "start_conversation", "title": "counted"}, "conversation.started"
        )
        frames_received += 1
        conversation_id = started["conversation_id"]
        for n in range(TURNS):
            prompt = f"count me {n}"
            await socket.send(
                {
                    "type": "send_message",
                    "conversation_id": conversation_id,
                    "content": prompt,
                    "client_message_id": f"c{n}",
                }
            )
            completed, before = await socket.recv_until("reply.completed", timeout_s=30)
            assert completed["content"] == expected_reply_text(prompt)
            frames_received += len(before) + 1
    finally:
        await socket.close()
    async with httpx.AsyncClient(base_url=observed.gateway.url, timeout=10) as client:
        for _ in range(TURNS):
            got = await client.get(f"/conversations/{conversation_id}", headers=user.headers)
            assert got.status_code == 200

    gateway = await wait_for_metric(
        observed.gateway,
        lambda s: (
            value(s, "convoai_ws_closes_total", code="1000")
            > value(gateway_before, "convoai_ws_closes_total", code="1000")
        ),
    )
    assert value(gateway, "convoai_ws_closes_total", code="1000") == (
        value(gateway_before, "convoai_ws_closes_total", code="1000") + 1
    )

    def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # Gateway: every frame the client received was counted as sent, and the frames it sent.
    assert delta(gateway, gateway_before, "convoai_ws_frames_sent_total") == frames_received
    assert (
        delta(gateway, gateway_before, "convoai_ws_frames_received_total", type="send_message")
        == TURNS
    )
    assert (
        delta(
            gateway,
            gateway_before,
            "convoai_http_requests_total",
            route="/conversations/{conversation_id}",
            method="GET",
            status="200",
        )
        == TURNS
    )
    assert value(gateway, "convoai_ws_open_connections") == 0

    # Worker: the turns completed, each with a time to first token.
    worker = await asyncio.to_thread(scrape, observed.worker)
    assert delta(worker, worker_before, "convoai_chat_turns_total", outcome="completed") == TURNS
    assert delta(worker, worker_before, "convoai_chat_time_to_first_token_seconds_count") == TURNS
    assert (
        delta(
            worker, worker_before, "convoai_chat_turn_duration_seconds_count", outcome="completed"
        )
        == TURNS
    )
    assert delta(worker, worker_before, "convoai_chat_turns_total", outcome="failed") == 0

    # Analytics: one message.sent and one reply.completed ingested per turn; a first attempt
    # sends no reply.started event (only a take-over of an abandoned reply does).
    def ingested(samples: Samples, event_type: str) -> float:
        return delta(
            samples, analytics_before, "convoai_analytics_events_ingested_total", type=event_type
        )

    analytics = await wait_for_metric(
        observed.analytics, lambda s: ingested(s, "reply.completed") >= TURNS
    )
    for event_type in ("message.sent", "reply.completed"):
        assert ingested(analytics, event_type) == TURNS, event_type
    assert ingested(analytics, "reply.started") == 0
    assert ingested(analytics, "conversation.created") == 1


async def test_labels_stay_bounded_over_a_thousand_conversation_ids(
    observed: ObservedPlatform,
) -> None:
    user = observed.new_user()
    ids = [secrets.token_urlsafe(9) for _ in range(1000)]
    before = {process: scrape(p) for process, p in observed.processes().items()}

    # Half the ids reach the gateway in REST paths, half in WebSocket frames.
    over_http, over_ws = ids[::2], ids[1::2]
    async with httpx.AsyncClient(base_url=observed.gateway.url, timeout=30) as client:
        for chunk in range(0, len(over_http), 50):
            answers = await asyncio.gather(
                *(
                    client.get(f"/conversations/{cid}", headers=user.headers)
                    for cid in over_http[chunk : chunk + 50]
                )
            )
            assert {a.status_code for a in answers} == {404}
    socket = await open_socket(observed.gateway, user)
    try:
        # In windows: a client flooding hundreds of frames unread would stall its own socket.
        for chunk in range(0, len(over_ws), 50):
            for cid in over_ws[chunk : chunk + 50]:
                await socket.send({"type": "subscribe", "conversation_id": cid})
            for _ in over_ws[chunk : chunk + 50]:
                frame = await socket.recv()
                assert frame["code"] == "not_found"
    finally:
        await socket.close()

    after = {process: scrape(p) for process, p in observed.processes().items()}
    text = httpx.get(f"{observed.gateway.url}/metrics", timeout=10).text
    assert not any(cid in text for cid in ids)
    for process, samples in after.items():
        new_series = samples.keys() - before[process].keys()
        # A few new (route, status) and (frame type, error code) combinations, never one
        # per conversation id.
        assert len(new_series) <= 40, (process, sorted(new_series))
    route = {"route": "/conversations/{conversation_id}", "method": "GET", "status": "404"}
    gateway, gateway_before = after["gateway"], before["gateway"]
    assert value(gateway, "convoai_http_requests_total", **route) - value(
        gateway_before, "convoai_http_requests_total", **route
    ) == len(over_http)
    assert value(gateway, "convoai_ws_error_frames_total", code="not_found") - value(
        gateway_before, "convoai_ws_error_frames_total", code="not_found"
    ) == len(over_ws)

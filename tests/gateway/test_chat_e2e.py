"""Whole chat turns through real processes: gateways, a chat worker and mock_llm over HTTP."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.gateway.conftest import (
    User,
    create_conversation,
    expected_reply_text,
    open_socket,
    slow_down,
    worker_env,
)
from tests.processes import ServiceProcess

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def worker(start_service: Callable[..., ServiceProcess], mock_llm) -> Iterator[ServiceProcess]:
    process = start_service("chat_worker", instance_id="worker-gw-e2e", **worker_env(mock_llm))
    yield process
    process.stop()


def assert_exact_stream(
    frames: list[dict[str, Any]], terminal: dict[str, Any], first_seq: int = 1, before: str = ""
) -> str:
    """Deltas numbered first_seq, first_seq+1, ... with nothing missing or repeated, then the
    terminal frame; the reply a client assembles. `before` (what a snapshot held) and the deltas
    are a prefix of the terminal frame's `content`, which carries the tail still pending when
    the model's stream ended."""
    deltas = [f for f in frames if f["type"] == "reply.delta"]
    assert [f["seq"] for f in deltas] == list(range(first_seq, first_seq + len(deltas)))
    assert terminal["seq"] == first_seq + len(deltas)
    streamed = before + "".join(f["delta"] for f in deltas)
    assert terminal["content"].startswith(streamed)
    return streamed + terminal["content"][len(streamed) :]


async def history(gateway: ServiceProcess, user: User, cid: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        response = await client.get(f"/conversations/{cid}/messages", headers=user.headers)
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_full_turn_over_websocket(gateway, worker, new_user):
    alice = new_user()
    socket = await open_socket(gateway, alice)
    cid = (
        await socket.request({"type": "start_conversation", "title": "e2e"}, "conversation.started")
    )["conversation_id"]
    prompt = f"Tell me about rivers {secrets.token_hex(4)}"
    ack = await socket.request(
        {
            "type": "send_message",
            "conversation_id": cid,
            "content": prompt,
            "client_message_id": "c1",
        },
        "ack",
    )
    completed, frames = await socket.recv_until("reply.completed")
    assert frames[0]["type"] == "reply.started"
    assert (frames[0]["reply_to"], frames[0]["seq"]) == (ack["message_id"], 0)
    assert assert_exact_stream(frames[1:], completed) == expected_reply_text(prompt)
    assert completed["message_id"] == frames[0]["message_id"]
    assert completed["usage"]["completion_tokens"] == 24

    messages = await history(gateway, alice, cid)
    assert [(m["role"], m["status"]) for m in messages] == [
        ("user", "complete"),
        ("assistant", "complete"),
    ]
    assert messages[1]["content"] == completed["content"]
    assert messages[1]["reply_to"] == ack["message_id"]
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        stats = (await client.get(f"/conversations/{cid}/stats", headers=alice.headers)).json()
    assert (stats["user_messages"], stats["assistant_messages"]) == (1, 1)
    assert stats["completion_tokens"] == 24 and stats["total_tokens"] > 24
    assert stats["avg_response_time_ms"] is not None
    await socket.close()


async def test_reply_to_a_message_sent_through_gateway_a_reaches_a_socket_on_gateway_b(
    gateway, gateway_b, worker, new_user
):
    alice = new_user()
    cid = (await create_conversation(gateway, alice))["id"]
    watcher = await open_socket(gateway_b, alice)
    await watcher.request({"type": "subscribe", "conversation_id": cid}, "snapshot")
    sender = await open_socket(gateway, alice)
    prompt = f"two gateways {secrets.token_hex(4)}"
    ack = await sender.request(
        {
            "type": "send_message",
            "conversation_id": cid,
            "content": prompt,
            "client_message_id": "x",
        },
        "ack",
    )
    completed, frames = await watcher.recv_until("reply.completed")
    assert frames[0]["type"] == "reply.started" and frames[0]["reply_to"] == ack["message_id"]
    assert assert_exact_stream(frames[1:], completed) == expected_reply_text(prompt)
    await watcher.close()
    await sender.close()


async def test_reconnect_mid_reply_reassembles_the_exact_reply(
    gateway, gateway_b, worker, mock_llm, new_user
):
    alice = new_user()
    cid = (await create_conversation(gateway, alice))["id"]
    tag = f"slow-{secrets.token_hex(4)}"
    await slow_down(mock_llm, tag, tokens_per_second=25)
    prompt = f"a long answer please {tag}"
    socket = await open_socket(gateway, alice)
    await socket.request(
        {
            "type": "send_message",
            "conversation_id": cid,
            "content": prompt,
            "client_message_id": "r",
        },
        "ack",
    )
    first, _ = await socket.recv_until("reply.delta")
    await socket.recv_until("reply.delta")
    await socket.close()  # the tab closes after a few deltas

    again = await open_socket(gateway_b, alice)  # and reopens on the other gateway
    snapshot = await again.request({"type": "subscribe", "conversation_id": cid}, "snapshot")
    partial = snapshot["partial"]
    assert partial is not None, "the reply finished before the reconnect; slow it down"
    assert partial["message_id"] == first["message_id"] and partial["seq"] >= 2
    completed, frames = await again.recv_until("reply.completed")
    reply = assert_exact_stream(
        frames, completed, first_seq=partial["seq"] + 1, before=partial["content"]
    )
    assert reply == expected_reply_text(prompt)
    await again.close()


async def test_wait_true_returns_the_finished_reply(gateway, worker, new_user):
    alice = new_user()
    cid = (await create_conversation(gateway, alice))["id"]
    prompt = f"http only {secrets.token_hex(4)}"
    async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as client:
        response = await client.post(
            f"/conversations/{cid}/messages",
            params={"wait": "true"},
            json={"content": prompt},
            headers=alice.headers,
        )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["reply"]["status"] == "complete"
    assert body["reply"]["reply_to"] == body["message_id"]
    assert body["reply"]["content"] == expected_reply_text(prompt)


async def test_cancel_mid_reply_stops_it_and_keeps_the_partial(gateway, worker, mock_llm, new_user):
    alice = new_user()
    cid = (await create_conversation(gateway, alice))["id"]
    tag = f"cancel-{secrets.token_hex(4)}"
    await slow_down(mock_llm, tag, tokens_per_second=10)
    prompt = f"stop me {tag}"
    socket = await open_socket(gateway, alice)
    await socket.request(
        {
            "type": "send_message",
            "conversation_id": cid,
            "content": prompt,
            "client_message_id": "s",
        },
        "ack",
    )
    await socket.recv_until("reply.delta")
    await socket.send({"type": "cancel", "conversation_id": cid})
    cancelled, frames = await socket.recv_until("reply.cancelled")
    assert all(f["type"] == "reply.delta" for f in frames)
    assert expected_reply_text(prompt).startswith(cancelled["content"])
    assert cancelled["content"] != expected_reply_text(prompt)
    messages = await history(gateway, alice, cid)
    assert (messages[1]["status"], messages[1]["content"]) == ("cancelled", cancelled["content"])
    await socket.close()


async def test_cancel_with_nothing_streaming_says_so_while_a_worker_runs(gateway, worker, new_user):
    """Every worker binds `conv.*`, so a cancel always looked routed and `nothing_to_cancel`
    never reached a client (issue 11, item 18): the worker holding the reply now answers."""
    alice = new_user()
    cid = (await create_conversation(gateway, alice))["id"]
    socket = await open_socket(gateway, alice)
    idle = await socket.request({"type": "cancel", "conversation_id": cid}, "error")
    assert idle["code"] == "nothing_to_cancel" and idle["conversation_id"] == cid
    await socket.close()


async def test_a_failing_model_gives_the_client_reply_failed_with_a_code(
    gateway, worker, mock_llm, new_user
):
    alice = new_user()
    cid = (await create_conversation(gateway, alice))["id"]
    tag = f"fail-{secrets.token_hex(4)}"
    async with httpx.AsyncClient(base_url=mock_llm.url) as client:
        rule = {"status": 500, "match": tag, "times": -1}
        assert (await client.post("/_faults", json=rule)).status_code == 201
    socket = await open_socket(gateway, alice)
    ack = await socket.request(
        {"type": "send_message", "conversation_id": cid, "content": tag, "client_message_id": "f"},
        "ack",
    )
    failed, _ = await socket.recv_until("reply.failed", timeout_s=30)
    assert failed["reply_to"] == ack["message_id"]
    assert failed["error"]["code"] and failed["error"]["message"]
    assert (await history(gateway, alice, cid))[1]["status"] == "failed"
    await socket.close()

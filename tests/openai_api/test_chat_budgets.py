"""WebSocket chat through the same ledger as the API, on two gateway processes: a token budget
(reserved when the message is stored, settled when the reply ends) and a cluster-wide rate."""

from __future__ import annotations

import asyncio
import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.gateway.conftest import Socket, User, open_socket, slow_down
from tests.openai_api.conftest import ApiUser, Stack, set_limits, usage

pytestmark = pytest.mark.e2e


async def chat_socket(gateway: Any, user: ApiUser) -> Socket:
    return await open_socket(gateway, User(user.id, user.username, user.access_token))


async def new_conversation(stack: Stack, user: ApiUser) -> str:
    async with httpx.AsyncClient(base_url=stack.gateway_a.url, timeout=30) as client:
        response = await client.post("/conversations/", json={}, headers=user.headers)
    assert response.status_code == 201, response.text
    conversation_id: str = response.json()["id"]
    return conversation_id


async def send(socket: Socket, conversation_id: str, content: str) -> dict[str, Any]:
    """Send a message; its `ack` or `error` (reply frames of earlier messages are skipped)."""
    client_id = secrets.token_hex(6)
    await socket.send(
        {
            "type": "send_message",
            "conversation_id": conversation_id,
            "content": content,
            "client_message_id": client_id,
        }
    )
    deadline = time.monotonic() + 20
    while True:
        frame = await socket.recv(max(0.01, deadline - time.monotonic()))
        if frame["type"] in ("ack", "error") and frame.get("client_message_id") == client_id:
            return frame


async def stored_messages(stack: Stack, user: ApiUser, conversation_id: str) -> list[str]:
    async with httpx.AsyncClient(base_url=stack.gateway_b.url, timeout=30) as client:
        response = await client.get(
            f"/conversations/{conversation_id}/messages", headers=user.headers
        )
    assert response.status_code == 200, response.text
    return [m["content"] for m in response.json()["items"] if m["role"] == "user"]


async def wait_for_usage(stack: Stack, user: ApiUser, ok: Any) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        current = await usage(stack, user.headers)
        if ok(current):
            return current
        assert time.monotonic() < deadline, current
        await asyncio.sleep(0.05)


def seconds_to_midnight_utc() -> float:
    now = datetime.now(UTC)
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
    return (midnight - now).total_seconds()


async def test_chat_over_the_token_budget_is_refused_until_a_reply_settles(
    stack, new_api_user, admin_headers
):
    user = await new_api_user()
    conversation_id = await new_conversation(stack, user)
    tag = f"wsbudget-{secrets.token_hex(4)}"
    await slow_down(stack.mock_llm, tag, tokens_per_second=8)
    socket_a = await chat_socket(stack.gateway_a, user)
    socket_b = await chat_socket(stack.gateway_b, user)
    try:
        first = await send(socket_a, conversation_id, f"first {tag}")
        assert first["type"] == "ack", first
        # Reserved when stored: its worst case (prompt estimate + reply maximum).
        streaming = await wait_for_usage(stack, user, lambda u: u["reserved_tokens_today"] > 0)
        worst_case = streaming["reserved_tokens_today"]
        assert streaming["used_tokens_today"] == 0
        # Room for one worst case, not two: the next message must wait for the first reply.
        await set_limits(stack, admin_headers, user.id, tokens_per_day=worst_case + worst_case // 2)

        refused = await send(socket_b, conversation_id, "second, while the first is answered")
        assert refused["type"] == "error", refused
        assert refused["code"] == "budget_exceeded"
        assert refused["limit"] == "tokens_per_day"
        assert abs(refused["retry_after"] - seconds_to_midnight_utc()) < 30
        assert refused["conversation_id"] == conversation_id

        completed, _ = await socket_a.recv_until("reply.completed", timeout_s=60)
        spent = completed["usage"]["prompt_tokens"] + completed["usage"]["completion_tokens"]
        assert spent > 0
        settled = await wait_for_usage(stack, user, lambda u: u["reserved_tokens_today"] == 0)
        assert settled["used_tokens_today"] == spent
        assert settled["remaining_tokens_today"] == worst_case + worst_case // 2 - spent

        third = await send(socket_b, conversation_id, "third, after the first reply settled")
        assert third["type"] == "ack", third
        await socket_b.recv_until("reply.completed", timeout_s=60)
        done = await wait_for_usage(stack, user, lambda u: u["reserved_tokens_today"] == 0)
        assert done["requests_today"] == 2
    finally:
        await socket_a.close()
        await socket_b.close()
    # The refused message was never stored (nor sent to a worker).
    assert await stored_messages(stack, user, conversation_id) == [
        f"first {tag}",
        "third, after the first reply settled",
    ]


async def test_chat_rate_is_cluster_wide(stack, new_api_user, admin_headers):
    user = await new_api_user()
    per_minute = 4
    await set_limits(stack, admin_headers, user.id, requests_per_minute=per_minute)
    conversation_id = await new_conversation(stack, user)
    sockets = [
        await chat_socket(stack.gateway_a, user),
        await chat_socket(stack.gateway_b, user),
    ]
    first_minute = datetime.now(UTC).replace(second=0, microsecond=0)
    try:
        answers = [
            await send(sockets[index % 2], conversation_id, f"rate {index}") for index in range(10)
        ]
    finally:
        for socket in sockets:
            await socket.close()
    minutes = 1 + (datetime.now(UTC).replace(second=0, microsecond=0) > first_minute)
    acks = [a for a in answers if a["type"] == "ack"]
    refusals = [a for a in answers if a["type"] == "error"]
    assert len(acks) + len(refusals) == 10
    for refusal in refusals:
        assert refusal["code"] == "rate_limited" and refusal["limit"] == "requests_per_minute"
        assert 1 <= refusal["retry_after"] <= 60
    # Per gateway it would be 2 x per_minute (each socket sends 5); the ledger row is shared.
    assert len(acks) == per_minute or (minutes == 2 and len(acks) <= 2 * per_minute)
    assert len(await stored_messages(stack, user, conversation_id)) == len(acks)

"""RabbitMQ outage under a running stack: the gateway's and the worker's broker connections go
through a TCP proxy the test cuts. A message accepted during the outage is answered after it."""

from __future__ import annotations

import secrets
import time
from typing import Any

import httpx
import pytest

from tests.faults import TcpProxy
from tests.gateway.conftest import (
    GATEWAY_ENV,
    broker_ready,
    create_conversation,
    expected_reply_text,
    open_socket,
    worker_env,
)
from tests.processes import ServiceProcess, wait_until

pytestmark = pytest.mark.e2e


def reply_in(frame: dict[str, Any], message_id: str) -> str | None:
    """The finished reply to `message_id` that `frame` carries, if any."""
    if frame["type"] == "reply.completed" and frame["reply_to"] == message_id:
        content: str = frame["content"]
        return content
    if frame["type"] == "snapshot":
        for message in frame["messages"]:
            if message["reply_to"] == message_id and message["status"] == "complete":
                stored: str = message["content"]
                return stored
    return None


async def test_message_sent_during_a_broker_outage_is_answered_after_it(
    infra, start_service, mock_llm, new_user
):
    proxy = TcpProxy.for_url(infra.amqp_url).start()
    proxied = {"CONVOAI_AMQP_URL": proxy.proxied_url(infra.amqp_url)}
    stack: list[ServiceProcess] = []
    try:
        gateway = start_service("gateway", instance_id="gw-chat-outage", **GATEWAY_ENV, **proxied)
        stack.append(gateway)
        stack.append(
            start_service(
                "chat_worker", instance_id="worker-outage", **worker_env(mock_llm), **proxied
            )
        )
        alice = new_user()
        cid = (await create_conversation(gateway, alice))["id"]
        socket = await open_socket(gateway, alice)
        await socket.request({"type": "subscribe", "conversation_id": cid}, "snapshot")

        proxy.cut()
        wait_until(lambda: not broker_ready(gateway.url), 15, 0.1, "gateway did not notice")
        prompt = f"sent in the dark {secrets.token_hex(4)}"
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
            accepted = await client.post(
                f"/conversations/{cid}/messages", json={"content": prompt}, headers=alice.headers
            )
        assert accepted.status_code == 202
        mid = accepted.json()["message_id"]
        # A socket opened during the outage still subscribes and sends (from the database).
        late = await open_socket(gateway, alice)
        snapshot = await late.request({"type": "subscribe", "conversation_id": cid}, "snapshot")
        assert [m["id"] for m in snapshot["messages"]] == [mid]
        late_prompt = f"also in the dark {secrets.token_hex(4)}"
        ack = await late.request(
            {
                "type": "send_message",
                "conversation_id": cid,
                "content": late_prompt,
                "client_message_id": "late",
            },
            "ack",
        )
        proxy.restore()

        reply = None
        deadline = time.monotonic() + 60
        while reply is None:
            reply = reply_in(await socket.recv(max(0.1, deadline - time.monotonic())), mid)
        assert reply == expected_reply_text(prompt)
        late_reply = None
        while late_reply is None:
            frame = await late.recv(max(0.1, deadline - time.monotonic()))
            late_reply = reply_in(frame, ack["message_id"])
        assert late_reply == expected_reply_text(late_prompt)
        async with httpx.AsyncClient(base_url=gateway.url) as client:
            messages = (
                await client.get(f"/conversations/{cid}/messages", headers=alice.headers)
            ).json()["items"]
        assert sorted((m["role"], m["status"]) for m in messages) == [
            ("assistant", "complete"),
            ("assistant", "complete"),
            ("user", "complete"),
            ("user", "complete"),
        ]
        assert {m["content"] for m in messages if m["role"] == "assistant"} == {reply, late_reply}
        await socket.close()
        await late.close()
    finally:
        # Stopped now, not at the end of the package: later tests expect no worker running.
        for process in stack:
            process.stop()
        proxy.close()

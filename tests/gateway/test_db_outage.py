"""PostgreSQL restarted under a running chat path: the gateway's and the worker's database
connections go through a TCP proxy the test cuts, which kills every pooled connection as a
server restart does. During the outage clients get clear answers; afterwards both services
work again without a restart of their own."""

from __future__ import annotations

import httpx
import pytest

from tests.faults import TcpProxy
from tests.gateway.conftest import (
    GATEWAY_ENV,
    Socket,
    create_conversation,
    expected_reply_text,
    open_socket,
    worker_env,
)
from tests.processes import ServiceProcess

pytestmark = pytest.mark.e2e


async def answered(socket: Socket, cid: str, content: str, client_id: str) -> dict:
    ack = await socket.request(
        {
            "type": "send_message",
            "conversation_id": cid,
            "content": content,
            "client_message_id": client_id,
        },
        "ack",
    )
    while True:
        frame, _ = await socket.recv_until("reply.completed", timeout_s=30)
        if frame["reply_to"] == ack["message_id"]:
            return frame


async def test_database_restart_under_the_chat_path(infra, start_service, mock_llm, new_user):
    proxy = TcpProxy.for_url(infra.database_url).start()
    proxied = {"CONVOAI_DATABASE_URL": proxy.proxied_url(infra.database_url)}
    stack: list[ServiceProcess] = []
    try:
        gateway = start_service("gateway", instance_id="gw-db-outage", **GATEWAY_ENV, **proxied)
        stack.append(gateway)
        stack.append(
            start_service(
                "chat_worker", instance_id="worker-db-outage", **worker_env(mock_llm), **proxied
            )
        )
        alice = new_user()
        cid = (await create_conversation(gateway, alice))["id"]
        socket = await open_socket(gateway, alice)
        await socket.request({"type": "subscribe", "conversation_id": cid}, "snapshot")
        # Both services now hold pooled connections, which the cut kills.
        before = await answered(socket, cid, "before the restart", "before")
        assert before["content"] == expected_reply_text("before the restart")

        proxy.cut()
        error = await socket.request(
            {
                "type": "send_message",
                "conversation_id": cid,
                "content": "during the restart",
                "client_message_id": "during",
            },
            "error",
        )
        assert (error["code"], error["client_message_id"]) == ("unavailable", "during")
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
            refused = await client.get(f"/conversations/{cid}", headers=alice.headers)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"

        proxy.restore()
        # The client resends; the worker's dead connections are replaced as it goes.
        after = await answered(socket, cid, "during the restart", "during")
        assert after["content"] == expected_reply_text("during the restart")
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
            history = await client.get(f"/conversations/{cid}/messages", headers=alice.headers)
        assert history.status_code == 200
        assert sorted((m["role"], m["status"]) for m in history.json()["items"]) == [
            ("assistant", "complete"),
            ("assistant", "complete"),
            ("user", "complete"),
            ("user", "complete"),
        ]
        await socket.close()
    finally:
        for process in stack:
            process.stop()
        proxy.close()

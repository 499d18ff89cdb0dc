"""A broker outage under a running gateway (its AMQP connections go through a TCP proxy that
the test cuts): accepted messages wait in the outbox, live frames resume after recovery."""

from __future__ import annotations

import httpx
import pytest

from shared.ids import IdKind, new_id
from tests.faults import TcpProxy
from tests.gateway.conftest import (
    GATEWAY_ENV,
    BrokerLine,
    broker_ready,
    completed,
    create_conversation,
    frame,
    next_message,
    open_socket,
)
from tests.processes import wait_until

pytestmark = pytest.mark.e2e


async def test_message_accepted_during_outage_is_published_and_live_frames_resume(
    infra, start_service, new_user, broker_line: BrokerLine
):
    proxy = TcpProxy.for_url(infra.amqp_url).start()
    try:
        gateway = start_service(
            "gateway",
            instance_id="gw-outage",
            CONVOAI_AMQP_URL=proxy.proxied_url(infra.amqp_url),
            **GATEWAY_ENV,
        )
        alice = new_user()
        cid = (await create_conversation(gateway, alice))["id"]
        events = await broker_line.events_queue("message.sent")
        socket = await open_socket(gateway, alice)
        await socket.request({"type": "subscribe", "conversation_id": cid}, "snapshot")

        proxy.cut()
        wait_until(lambda: not broker_ready(gateway.url), 15, 0.1, "gateway did not notice")
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
            accepted = await client.post(
                f"/conversations/{cid}/messages", json={"content": "during"}, headers=alice.headers
            )
        assert accepted.status_code == 202, accepted.text
        # Accepted while the broker is still cut off (it is restored only below): accepting does
        # not wait for the broker, the outbox holds the event.
        assert not broker_ready(gateway.url)
        mid = accepted.json()["message_id"]
        proxy.restore()

        event = await next_message(events, timeout_s=30)
        assert (event["message_id"], event["conversation_id"]) == (mid, cid)
        wait_until(lambda: broker_ready(gateway.url), 30, 0.1, "gateway did not recover")

        # After recovery the socket is resynchronised with what it may have missed...
        snapshot, _ = await socket.recv_until("snapshot", timeout_s=30)
        assert mid in [m["id"] for m in snapshot["messages"]]
        # ...and live frames flow again through the re-declared, re-bound queue.
        reply = new_id(IdKind.MESSAGE)
        await broker_line.publish_frame(frame("reply.started", cid, reply, mid, 0, model="m"))
        await broker_line.publish_frame(frame("reply.delta", cid, reply, mid, 1, delta="back"))
        await broker_line.publish_frame(completed(cid, reply, mid, 1, "back"))
        last, before = await socket.recv_until("reply.completed")
        assert [f["type"] for f in before] == ["reply.started", "reply.delta"]
        assert last["content"] == "back"
        await socket.close()
    finally:
        proxy.close()

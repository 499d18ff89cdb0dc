"""A reply left `streaming` by a worker that died, while other workers run (issue 11, item 18).

Every worker binds `conv.*` on the control exchange, so a resync always looked routed and a
subscribe waited the whole resync timeout for an answer no one would send. The gateway now asks
the worker the reply row names, alone: a dead worker's control queue is gone, so the broker
returns the command at once.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Iterator

import aio_pika
import pytest

from shared.topology import Topology
from tests.gateway.conftest import (
    GATEWAY_ENV,
    BrokerLine,
    User,
    open_socket,
    slow_down,
    worker_env,
)
from tests.processes import ServiceProcess

pytestmark = pytest.mark.e2e

RESYNC_TIMEOUT_S = 30.0
"""Far above the frame timeout of the test's socket: waiting it out fails the test."""


@pytest.fixture(scope="module")
def patient_gateway(start_service: Callable[..., ServiceProcess]) -> Iterator[ServiceProcess]:
    env = {**GATEWAY_ENV, "CONVOAI_RESYNC_TIMEOUT_S": str(RESYNC_TIMEOUT_S)}
    process = start_service("gateway", instance_id="gw-stale", **env)
    yield process
    process.stop()


async def start_slow_reply(socket, cid: str, tag: str) -> dict:
    await socket.request(
        {"type": "send_message", "conversation_id": cid, "content": tag, "client_message_id": tag},
        "ack",
    )
    delta, _ = await socket.recv_until("reply.delta")
    return delta


async def queue_exists(line: BrokerLine, name: str) -> bool:
    channel = await line.connection.channel()
    try:
        await channel.declare_queue(name, passive=True)
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return False
    finally:
        if not channel.is_closed:
            await channel.close()
    return True


async def test_subscribe_to_a_reply_whose_worker_died_does_not_wait_for_it(
    patient_gateway, start_service, mock_llm, new_user, broker_line: BrokerLine
):
    alice: User = new_user()
    stale_tag, busy_tag = (f"stale-{secrets.token_hex(4)}", f"busy-{secrets.token_hex(4)}")
    for tag in (stale_tag, busy_tag):
        await slow_down(mock_llm, tag, tokens_per_second=2)
    one_at_a_time = {"CONVOAI_PREFETCH": "1", **worker_env(mock_llm)}
    doomed = start_service("chat_worker", instance_id="worker-doomed", **one_at_a_time)
    socket = await open_socket(patient_gateway, alice)
    stale_cid = (await socket.request({"type": "start_conversation"}, "conversation.started"))[
        "conversation_id"
    ]
    stale = await start_slow_reply(socket, stale_cid, stale_tag)

    # A second worker, busy with a slow reply of its own (prefetch 1): it runs, so its control
    # queue takes every command, but it cannot pick up the dead worker's request yet.
    bystander = start_service("chat_worker", instance_id="worker-bystander", **one_at_a_time)
    try:
        busy_cid = (await socket.request({"type": "start_conversation"}, "conversation.started"))[
            "conversation_id"
        ]
        await start_slow_reply(socket, busy_cid, busy_tag)
        doomed.kill()
        doomed_queue = Topology(broker_line.topology.namespace).worker_control_queue(
            "worker-doomed"
        )
        deadline = time.monotonic() + 10
        while await queue_exists(broker_line, doomed_queue.name):
            assert time.monotonic() < deadline, "the dead worker's control queue stayed"
            await asyncio.sleep(0.05)
        await socket.close()

        again = await open_socket(patient_gateway, alice)
        started = time.monotonic()
        snapshot = await again.request(
            {"type": "subscribe", "conversation_id": stale_cid}, "snapshot"
        )
        elapsed = time.monotonic() - started
        print(f"subscribe to a stale streaming reply: {elapsed:.3f} s")
        assert snapshot["partial"] is not None
        assert snapshot["partial"]["message_id"] == stale["message_id"]

        # Nothing is being generated there either: the cancel says so.
        refused = await again.request({"type": "cancel", "conversation_id": stale_cid}, "error")
        assert refused["code"] == "nothing_to_cancel"
        await again.close()
    finally:
        bystander.kill()

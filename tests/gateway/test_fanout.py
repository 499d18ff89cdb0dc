"""Live frames through the gateways, with the test playing the worker's side of shared/stream.py:
fan-out to every socket on every gateway, reference-counted bindings, and the subscribe seam.

Over 400 lines on purpose: every test plays the same worker side of the frame contract with the
same helpers; one module keeps that contract's cases side by side.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import aio_pika
import httpx
import pytest
from pamqp.commands import Basic
from sqlalchemy.ext.asyncio import AsyncEngine
from websockets.client import ClientProtocol
from websockets.frames import Close, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from services.chat.models import Message
from shared.db import create_engine, create_session_factory, transaction
from shared.ids import IdKind, new_id
from shared.topology import conversation_routing_key
from tests.gateway.conftest import (
    BrokerLine,
    completed,
    create_conversation,
    frame,
    next_message,
    open_socket,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
async def engine(infra) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(infra.database_url, pool_size=2)
    yield engine
    await engine.dispose()


async def collect_reply(socket, until: str = "reply.completed") -> list[dict[str, Any]]:
    last, before = await socket.recv_until(until)
    return [*before, last]


async def store_streaming_reply(
    engine: AsyncEngine, cid: str, content: str, seq: int, worker_id: str | None = None
) -> tuple[str, str]:
    """A user message and its half-streamed reply, as a worker would have persisted them."""
    user_mid, reply_mid = new_id(IdKind.MESSAGE), new_id(IdKind.MESSAGE)
    async with transaction(create_session_factory(engine)) as session:
        session.add(
            Message(
                id=user_mid,
                conversation_id=cid,
                role="user",
                content="q",
                status="complete",
                seq=0,
                attempt=1,
            )
        )
        await session.flush()
        session.add(
            Message(
                id=reply_mid,
                conversation_id=cid,
                role="assistant",
                content=content,
                status="streaming",
                reply_to=user_mid,
                seq=seq,
                attempt=1,
                worker_id=worker_id,
            )
        )
    return user_mid, reply_mid


async def unroutable(line: BrokerLine, cid: str) -> bool:
    """Whether a frame for `cid` reaches no queue at all (no gateway is bound to it)."""
    channel = await line.connection.channel(publisher_confirms=True)
    try:
        exchange = await channel.get_exchange(line.topology.stream.name)
        confirmation = await exchange.publish(
            aio_pika.Message(b"{}"), routing_key=conversation_routing_key(cid), mandatory=True
        )
    finally:
        await channel.close()
    # A mandatory message no queue takes comes back as basic.return instead of an ack.
    return isinstance(getattr(confirmation, "delivery", None), Basic.Return)


async def test_frames_reach_every_socket_on_every_gateway_once(
    gateway, gateway_b, new_user, broker_line: BrokerLine
):
    alice = new_user()
    cid = (await create_conversation(gateway, alice))["id"]
    sockets = [
        await open_socket(gateway, alice),
        await open_socket(gateway, alice),
        await open_socket(gateway_b, alice),
    ]
    for s in sockets:
        await s.request({"type": "subscribe", "conversation_id": cid}, "snapshot")
    mid, reply_to = new_id(IdKind.MESSAGE), new_id(IdKind.MESSAGE)
    await broker_line.publish_frame(frame("reply.started", cid, mid, reply_to, 0, model="mock"))
    for seq, delta in enumerate(["Hel", "lo", "!"], start=1):
        await broker_line.publish_frame(frame("reply.delta", cid, mid, reply_to, seq, delta=delta))
    await broker_line.publish_frame(completed(cid, mid, reply_to, 3, "Hello!"))

    for s in sockets:
        frames = await collect_reply(s)
        assert [f["type"] for f in frames] == ["reply.started"] + ["reply.delta"] * 3 + [
            "reply.completed"
        ]
        assert [f["seq"] for f in frames[1:4]] == [1, 2, 3]
        assert "".join(f["delta"] for f in frames[1:4]) == frames[-1]["content"] == "Hello!"
        assert frames[-1]["usage"]["total_tokens"] == 7
        assert (await s.request({"type": "ping"}, "pong"))["type"] == "pong"  # nothing doubled

    # One socket leaving gateway A does not unbind the other one's conversation.
    await sockets[0].request({"type": "unsubscribe", "conversation_id": cid}, "unsubscribed")
    await broker_line.publish_frame(frame("reply.started", cid, "m2", "u2", 0, model="mock"))
    assert (await sockets[1].recv())["message_id"] == "m2"
    assert (await sockets[2].recv())["message_id"] == "m2"
    assert not await unroutable(broker_line, cid)
    for s in sockets:
        await s.close()
    # The last watcher gone on both gateways: both bindings are removed.
    deadline = asyncio.get_running_loop().time() + 5
    while not await unroutable(broker_line, cid):
        assert asyncio.get_running_loop().time() < deadline, "binding left behind"
        await asyncio.sleep(0.05)


async def test_subscribe_mid_reply_takes_the_workers_snapshot_and_drops_older_frames(
    gateway, new_user, broker_line: BrokerLine, engine
):
    alice = new_user()
    cid = (await create_conversation(gateway, alice))["id"]
    user_mid, reply_mid = await store_streaming_reply(engine, cid, "ab", seq=2)
    control = await broker_line.control_queue(cid)
    socket = await open_socket(gateway, alice)
    await socket.send({"type": "subscribe", "conversation_id": cid})

    resync = await next_message(control)
    assert resync["type"] == "resync" and resync["conversation_id"] == cid
    # The worker is at seq 4 in memory; seq 3 and 4 go out while the gateway builds the snapshot.
    await broker_line.publish_frame(frame("reply.delta", cid, reply_mid, user_mid, 3, delta="c"))
    await broker_line.publish_frame(frame("reply.delta", cid, reply_mid, user_mid, 4, delta="d"))
    await broker_line.publish_frame(
        frame(
            "reply.snapshot",
            cid,
            reply_mid,
            user_mid,
            4,
            content="abcd",
            request_id=resync["request_id"],
        )
    )
    await broker_line.publish_frame(frame("reply.delta", cid, reply_mid, user_mid, 5, delta="e"))
    await broker_line.publish_frame(frame("reply.delta", cid, reply_mid, user_mid, 4, delta="d"))
    await broker_line.publish_frame(completed(cid, reply_mid, user_mid, 5, "abcde"))

    snapshot = await socket.recv()
    assert snapshot["type"] == "snapshot"
    assert [m["id"] for m in snapshot["messages"]] == [user_mid]
    assert snapshot["partial"] == {
        "message_id": reply_mid,
        "reply_to": user_mid,
        "seq": 4,
        "attempt": 1,
        "content": "abcd",
    }
    rest = await collect_reply(socket)
    assert [(f["type"], f.get("seq")) for f in rest] == [("reply.delta", 5), ("reply.completed", 5)]
    assembled = snapshot["partial"]["content"] + "".join(f["delta"] for f in rest[:-1])
    assert assembled == rest[-1]["content"] == "abcde"
    await socket.close()


async def test_subscribe_falls_back_to_the_stored_partial_when_no_worker_answers(
    gateway, new_user, broker_line: BrokerLine, engine
):
    alice = new_user()
    cid = (await create_conversation(gateway, alice))["id"]
    user_mid, reply_mid = await store_streaming_reply(engine, cid, "stored", seq=6)
    socket = await open_socket(gateway, alice)
    snapshot = await socket.request({"type": "subscribe", "conversation_id": cid}, "snapshot")
    assert snapshot["partial"]["content"] == "stored" and snapshot["partial"]["seq"] == 6

    # The reply is regenerated by another worker (attempt 2): it starts over from seq 0.
    await broker_line.publish_frame(frame("reply.delta", cid, reply_mid, user_mid, 6, delta="x"))
    await broker_line.publish_frame(
        frame("reply.started", cid, reply_mid, user_mid, 0, attempt=2, model="mock")
    )
    await broker_line.publish_frame(
        frame("reply.delta", cid, reply_mid, user_mid, 1, attempt=2, delta="new")
    )
    await broker_line.publish_frame(
        frame("reply.delta", cid, reply_mid, user_mid, 2, attempt=1, delta="old")
    )
    await broker_line.publish_frame(completed(cid, reply_mid, user_mid, 1, "new", attempt=2))
    rest = await collect_reply(socket)
    assert [(f["type"], f["attempt"], f["seq"]) for f in rest] == [
        ("reply.started", 2, 0),
        ("reply.delta", 2, 1),
        ("reply.completed", 2, 1),
    ]
    await socket.close()


async def test_a_socket_that_sent_a_message_receives_its_reply_without_subscribing(
    gateway, new_user, broker_line: BrokerLine
):
    alice = new_user()
    socket = await open_socket(gateway, alice)
    started = await socket.request({"type": "start_conversation"}, "conversation.started")
    cid = started["conversation_id"]
    ack = await socket.request(
        {"type": "send_message", "conversation_id": cid, "content": "hi", "client_message_id": "1"},
        "ack",
    )
    mid = new_id(IdKind.MESSAGE)
    await broker_line.publish_frame(
        frame("reply.started", cid, mid, ack["message_id"], 0, model="m")
    )
    await broker_line.publish_frame(completed(cid, mid, ack["message_id"], 0, ""))
    frames = await collect_reply(socket)
    assert [f["type"] for f in frames] == ["reply.started", "reply.completed"]
    await socket.close()


async def test_cancel_is_published_to_the_conversations_worker(
    gateway, new_user, broker_line: BrokerLine
):
    alice = new_user()
    cid = (await create_conversation(gateway, alice))["id"]
    socket = await open_socket(gateway, alice)
    idle = await socket.request({"type": "cancel", "conversation_id": cid}, "error")
    assert idle["code"] == "nothing_to_cancel"
    control = await broker_line.control_queue(cid)
    await socket.send({"type": "cancel", "conversation_id": cid, "message_id": "abcdefghij"})
    command = await next_message(control)
    assert command == {
        "type": "cancel",
        "conversation_id": cid,
        "message_id": "abcdefghij",
        "requested_by": alice.user_id,
    }
    await socket.close()


async def test_subscribe_before_the_reply_row_exists_gets_the_workers_in_memory_reply(
    gateway, new_user, broker_line: BrokerLine
):
    alice = new_user()
    cid = (await create_conversation(gateway, alice))["id"]
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        sent = await client.post(
            f"/conversations/{cid}/messages", json={"content": "q"}, headers=alice.headers
        )
    user_mid = sent.json()["message_id"]
    reply_mid = new_id(IdKind.MESSAGE)
    control = await broker_line.control_queue(cid)
    socket = await open_socket(gateway, alice)
    await socket.send({"type": "subscribe", "conversation_id": cid})
    resync = await next_message(control)
    await broker_line.publish_frame(
        frame(
            "reply.snapshot",
            cid,
            reply_mid,
            user_mid,
            2,
            content="Hi t",
            request_id=resync["request_id"],
        )
    )
    await broker_line.publish_frame(frame("reply.delta", cid, reply_mid, user_mid, 3, delta="here"))
    await broker_line.publish_frame(completed(cid, reply_mid, user_mid, 4, "Hi there"))
    snapshot = await socket.recv()
    assert snapshot["type"] == "snapshot"
    assert [m["id"] for m in snapshot["messages"]] == [user_mid]
    assert (snapshot["partial"]["message_id"], snapshot["partial"]["content"]) == (
        reply_mid,
        "Hi t",
    )
    rest = await collect_reply(socket)
    assert snapshot["partial"]["content"] + rest[0]["delta"] == rest[-1]["content"]
    await socket.close()


async def test_subscribe_asks_the_worker_its_reply_row_names_and_believes_its_answer(
    gateway, new_user, broker_line: BrokerLine, engine
):
    """Each worker's control queue takes every command (`conv.*`), so a broadcast resync always
    looked routed and waited the resync timeout (issue 11, item 18); the holder named in the row
    is asked alone and answers either way."""
    alice = new_user()
    cid = (await create_conversation(gateway, alice))["id"]
    holder = f"w-{new_id(IdKind.MESSAGE)}"
    user_mid, reply_mid = await store_streaming_reply(engine, cid, "ab", seq=2, worker_id=holder)
    assert broker_line.channel is not None
    holder_queue = await broker_line.channel.declare_queue(
        broker_line.topology.worker_control_queue(holder).name, exclusive=True, auto_delete=True
    )
    bystander = await broker_line.control_queue(cid)  # another worker, bound to `conv.*`
    socket = await open_socket(gateway, alice)

    # Holding the reply: it answers with a snapshot of its memory.
    await socket.send({"type": "subscribe", "conversation_id": cid})
    asked = await next_raw_message(holder_queue)
    resync = json.loads(asked.body)
    assert (resync["type"], resync["conversation_id"]) == ("resync", cid)
    assert asked.reply_to and asked.correlation_id
    await broker_line.publish_frame(
        frame(
            "reply.snapshot",
            cid,
            reply_mid,
            user_mid,
            4,
            content="abcd",
            request_id=resync["request_id"],
        )
    )
    await answer(broker_line, asked, acted=True)
    snapshot = await socket.recv()
    assert (snapshot["partial"]["content"], snapshot["partial"]["seq"]) == ("abcd", 4)

    # No longer holding it: the stored partial is the snapshot, without waiting for anything.
    await socket.send({"type": "subscribe", "conversation_id": cid})
    asked = await next_raw_message(holder_queue)
    await answer(broker_line, asked, acted=False)
    snapshot = await socket.recv()
    assert (snapshot["partial"]["content"], snapshot["partial"]["seq"]) == ("ab", 2)
    assert await bystander.get(no_ack=True, fail=False) is None  # nothing was broadcast
    await socket.close()


async def next_raw_message(
    queue: aio_pika.abc.AbstractQueue, timeout_s: float = 10
) -> aio_pika.abc.AbstractIncomingMessage:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        message = await queue.get(no_ack=True, fail=False)
        if message is not None:
            return message
        await asyncio.sleep(0.02)
    raise TimeoutError("no message on the queue")


async def answer(
    line: BrokerLine, asked: aio_pika.abc.AbstractIncomingMessage, *, acted: bool
) -> None:
    """Answer a command as the worker it was sent to does (chat_worker/broadcast.py)."""
    assert line.channel is not None and asked.reply_to
    await line.channel.default_exchange.publish(
        aio_pika.Message(
            json.dumps({"type": "control.answer", "acted": acted}).encode(),
            correlation_id=asked.correlation_id,
        ),
        routing_key=asked.reply_to,
    )


class StalledClient:
    """A WebSocket client that authenticates, subscribes and then stops reading, with a small
    fixed receive buffer: a client on a dead-slow link, as the gateway sees it."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        self.sock.connect(("127.0.0.1", port))
        self.sock.settimeout(10)
        self.protocol = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/ws"), max_size=None)

    def _flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                self.sock.sendall(data)

    def _read_until(self, predicate: Callable[[list[Any]], bool]) -> list[Any]:
        seen: list[Any] = []
        while not predicate(seen):
            data = self.sock.recv(65536)
            if not data:
                self.protocol.receive_eof()
                seen.extend(self.protocol.events_received())
                break
            self.protocol.receive_data(data)
            seen.extend(self.protocol.events_received())
        return seen

    def open(self, token: str, conversation_id: str) -> None:
        self.protocol.send_request(self.protocol.connect())
        self._flush()
        self._read_until(lambda events: any(isinstance(e, Response) for e in events))
        for client_frame in (
            {"type": "auth", "token": token},
            {"type": "subscribe", "conversation_id": conversation_id},
        ):
            self.protocol.send_text(json.dumps(client_frame).encode())
        self._flush()
        self._read_until(
            lambda events: any(b'"snapshot"' in getattr(e, "data", b"") for e in events)
        )

    def drain_until_closed(self) -> int | None:
        """Read everything the gateway still sends; the close code it sent, if any."""
        events = self._read_until(
            lambda seen: any(getattr(e, "opcode", None) == Opcode.CLOSE for e in seen)
        )
        closes = [e for e in events if getattr(e, "opcode", None) == Opcode.CLOSE]
        return Close.parse(closes[0].data).code if closes else None


async def test_a_socket_that_stops_reading_is_closed_without_stalling_the_others(
    gateway, new_user, broker_line: BrokerLine
):
    alice = new_user()
    cid = (await create_conversation(gateway, alice))["id"]
    reader = await open_socket(gateway, alice)
    await reader.request({"type": "subscribe", "conversation_id": cid}, "snapshot")
    stalled = StalledClient(gateway.port)
    await asyncio.to_thread(stalled.open, alice.token, cid)
    mid, reply_to = new_id(IdKind.MESSAGE), new_id(IdKind.MESSAGE)
    chunk = "x" * 8192
    # 20 MB: far beyond the stalled socket's kernel buffers (a few MB) plus its send queue
    # (CONVOAI_WS_SEND_QUEUE_SIZE=500 frames of 8 KB in these tests).
    count = 2500

    async def publish() -> None:
        await broker_line.publish_frame(frame("reply.started", cid, mid, reply_to, 0, model="m"))
        for seq in range(1, count + 1):
            await broker_line.publish_frame(
                frame("reply.delta", cid, mid, reply_to, seq, delta=chunk)
            )

    publishing = asyncio.create_task(publish())
    await reader.recv_until("reply.started")
    for expected_seq in range(1, count + 1):
        assert (await reader.recv())["seq"] == expected_seq
    await publishing
    assert await asyncio.to_thread(stalled.drain_until_closed) == 1013
    await reader.close()

"""A real chat worker and mock_llm, and a probe that plays the gateway over the real broker."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import aio_pika
import httpx
import pytest
from sqlalchemy import select

from services.chat.models import Conversation, Message, MessageRole
from services.mock_llm.service import expected_reply
from services.mock_llm.settings import MockLLMSettings
from shared.db import create_engine, create_session_factory, transaction
from shared.events import MessageSent
from shared.ids import IdKind, new_id
from shared.stream import (
    ReplyCancelledFrame,
    ReplyCompletedFrame,
    ReplyDeltaFrame,
    ReplyFailedFrame,
    ReplyStartedFrame,
    StreamFrame,
    stream_frame_adapter,
)
from shared.topology import Topology, conversation_routing_key

REPLY_TOKENS = 30
FRAME_TIMEOUT_S = 15.0
TERMINAL = (ReplyCompletedFrame, ReplyFailedFrame, ReplyCancelledFrame)

WORKER_ENV = {
    "CONVOAI_LLM_RETRY_BASE_S": "0.05",
    "CONVOAI_LLM_RETRY_MAX_S": "0.2",
    "CONVOAI_LLM_TIMEOUT_S": "2",
    "CONVOAI_PERSIST_INTERVAL_S": "0.2",
    "CONVOAI_FRAME_INTERVAL_MS": "20",
}


@pytest.fixture(scope="package")
def mock_llm(start_service):
    return start_service("mock_llm", CONVOAI_MOCK_LLM_REPLY_TOKENS=str(REPLY_TOKENS))


@pytest.fixture(scope="package")
def mock_settings() -> MockLLMSettings:
    return MockLLMSettings(reply_tokens=REPLY_TOKENS)


@pytest.fixture(scope="package")
def workers() -> Iterator[list]:
    """Every worker process this package started (some may have been stopped or killed).

    Stopped with the package: a worker left running would answer (and relay the outbox rows
    of) the next packages' tests, which share this run's database and broker namespace.
    """
    started: list = []
    yield started
    for process in started:
        process.stop()


@pytest.fixture(scope="package")
def start_worker(start_service, mock_llm, workers):
    def _start(**env: str):
        process = start_service(
            "chat_worker",
            instance_id=f"worker-{secrets.token_hex(3)}",
            CONVOAI_LLM_BASE_URL=f"{mock_llm.url}/v1",
            **{**WORKER_ENV, **env},
        )
        workers.append(process)
        return process

    return _start


@pytest.fixture(scope="package")
def worker(start_worker):
    return start_worker()


@pytest.fixture
def faults(mock_llm):
    """Queue mock_llm faults for this test only."""

    def _add(**rule) -> None:
        assert httpx.post(f"{mock_llm.url}/_faults", json=rule).status_code == 201

    httpx.delete(f"{mock_llm.url}/_faults")
    yield _add
    httpx.delete(f"{mock_llm.url}/_faults")


@dataclass
class Turn:
    """One user message stored and announced; its reply's frames as the probe received them."""

    conversation_id: str
    message_id: str
    owner_id: str
    content: str
    frames: asyncio.Queue[StreamFrame] = field(default_factory=asyncio.Queue)
    received: list[StreamFrame] = field(default_factory=list)

    async def next_frame(self, timeout_s: float = FRAME_TIMEOUT_S) -> StreamFrame:
        frame = await asyncio.wait_for(self.frames.get(), timeout_s)
        self.received.append(frame)
        return frame

    async def until_terminal(self, timeout_s: float = FRAME_TIMEOUT_S) -> StreamFrame:
        while True:
            frame = await self.next_frame(timeout_s)
            if isinstance(frame, TERMINAL):
                return frame

    def expected_text(self, settings: MockLLMSettings) -> str:
        return expected_reply([{"role": "user", "content": self.content}], settings).text


@dataclass
class ChatProbe:
    """Stores messages like the gateway, publishes `message.sent`, and listens to `conv.<id>`."""

    topology: Topology
    sessions: object
    channel: aio_pika.abc.AbstractChannel
    events: aio_pika.abc.AbstractExchange
    stream: aio_pika.abc.AbstractExchange
    control: aio_pika.abc.AbstractExchange

    async def send(self, content: str, conversation_id: str | None = None) -> Turn:
        owner_id = new_id(IdKind.USER)
        conversation_id = conversation_id or new_id(IdKind.CONVERSATION)
        turn = Turn(conversation_id, new_id(IdKind.MESSAGE), owner_id, content)
        queue = await self.channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(self.stream, conversation_routing_key(conversation_id))

        async def on_frame(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            turn.frames.put_nowait(stream_frame_adapter.validate_json(message.body))

        await queue.consume(on_frame, no_ack=True)
        async with transaction(self.sessions) as session:  # type: ignore[arg-type]
            if await session.get(Conversation, conversation_id) is None:
                session.add(Conversation(id=conversation_id, owner_id=owner_id, title="t"))
                await session.flush()
            session.add(
                Message(
                    id=turn.message_id,
                    conversation_id=conversation_id,
                    role=MessageRole.USER.value,
                    content=content,
                )
            )
        await self.announce(turn)
        return turn

    async def announce(self, turn: Turn) -> None:
        event = MessageSent(
            producer="test",
            user_id=turn.owner_id,
            conversation_id=turn.conversation_id,
            message_id=turn.message_id,
            content_length=len(turn.content),
        )
        await self.events.publish(
            aio_pika.Message(
                event.model_dump_json().encode(),
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                content_type="application/json",
                message_id=str(event.event_id),
            ),
            routing_key=event.type,
        )

    async def listen_for_events(self, routing_key: str) -> asyncio.Queue[dict[str, object]]:
        """Every `routing_key` event published from now on, decoded."""
        received: asyncio.Queue[dict[str, object]] = asyncio.Queue()
        queue = await self.channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(self.events, routing_key)

        async def on_event(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            received.put_nowait(json.loads(message.body))

        await queue.consume(on_event, no_ack=True)
        return received

    async def command(self, conversation_id: str, body: str) -> None:
        await self.control.publish(
            aio_pika.Message(body.encode(), content_type="application/json"),
            routing_key=conversation_routing_key(conversation_id),
        )

    async def replies(self, turn: Turn) -> list[Message]:
        async with transaction(self.sessions) as session:  # type: ignore[arg-type]
            rows = await session.execute(select(Message).where(Message.reply_to == turn.message_id))
            return list(rows.scalars().all())


@pytest.fixture(scope="package")
async def probe(infra, worker) -> AsyncIterator[ChatProbe]:
    topology = Topology(infra.namespace)
    engine = create_engine(infra.database_url, pool_size=2)
    connection = await aio_pika.connect_robust(infra.amqp_url)
    channel = await connection.channel()
    probe = ChatProbe(
        topology=topology,
        sessions=create_session_factory(engine),
        channel=channel,
        events=await channel.get_exchange(topology.events.name),
        stream=await channel.get_exchange(topology.stream.name),
        control=await channel.get_exchange(topology.control.name),
    )
    yield probe
    await connection.close()
    await engine.dispose()


def worker_metrics(process) -> dict[str, int]:
    return httpx.get(f"{process.url}/stats", timeout=5).json()


def unique(label: str) -> str:
    """Message text that also names the mock_llm fault rules meant for it."""
    return f"{label} [{secrets.token_hex(4)}]"


def assert_clean_stream(turn: Turn, attempt: int = 1) -> str:
    """The frames of `attempt`: started at 0, deltas without gaps, terminal last; the text a
    client assembles from them. The deltas are a prefix of the terminal frame's `content`, which
    also carries the tail that was still pending when the model's stream ended."""
    frames = [f for f in turn.received if f.attempt == attempt]
    assert isinstance(frames[0], ReplyStartedFrame) and frames[0].seq == 0
    assert [f.seq for f in frames] == list(range(len(frames)))
    assert all(isinstance(f, ReplyDeltaFrame) for f in frames[1:-1])
    streamed = "".join(f.delta for f in frames[1:-1] if isinstance(f, ReplyDeltaFrame))
    terminal = frames[-1]
    assert isinstance(terminal, ReplyCompletedFrame | ReplyFailedFrame | ReplyCancelledFrame)
    assert terminal.content.startswith(streamed)
    return streamed + terminal.content[len(streamed) :]

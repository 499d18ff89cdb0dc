"""Gateway test fixtures: access tokens minted like the auth service does, a running gateway,
WebSocket helpers and a direct line to the broker's stream/control exchanges."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aio_pika
import httpx
import jwt
import pytest
import websockets

from shared.broker import delete_topology
from shared.ids import IdKind, new_id
from shared.topology import Topology, conversation_routing_key
from tests.infra import TestInfrastructure
from tests.processes import ServiceProcess

FRAME_TIMEOUT_S = 10.0
ALLOWED_ORIGIN = "http://chat.example"
GATEWAY_ENV = {
    "CONVOAI_ALLOWED_ORIGINS": json.dumps([ALLOWED_ORIGIN]),
    "CONVOAI_MESSAGES_PER_MINUTE": "20",
    "CONVOAI_WS_AUTH_TIMEOUT_S": "2",
    "CONVOAI_RESYNC_TIMEOUT_S": "1.5",
    "CONVOAI_WS_SEND_QUEUE_SIZE": "500",
    "CONVOAI_ALLOWED_MODELS": json.dumps(["mock-1", "m2", "mock"]),
}


@dataclass(frozen=True)
class User:
    user_id: str
    username: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def mint_token(
    infra: TestInfrastructure, user_id: str, username: str, *, ttl_s: int = 900, **overrides: Any
) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": user_id,
        "username": username,
        "roles": ["user"],
        "iss": "convoai-auth",
        "aud": "convoai",
        "iat": now,
        "nbf": now,
        "exp": now + ttl_s,
        "jti": str(uuid.uuid4()),
        "typ": "access",
    }
    claims.update(overrides)
    return jwt.encode(claims, infra.jwt_secret, algorithm="HS256")


@pytest.fixture(scope="package")
def gw_infra(infra: TestInfrastructure) -> TestInfrastructure:
    """The session's database with this package's own broker namespace: chat workers that other
    packages leave running in the session namespace never answer this package's messages."""
    return dataclasses.replace(infra, namespace=f"{infra.namespace}gw")


@pytest.fixture(scope="package")
async def start_service(
    gw_infra: TestInfrastructure, start_service: Callable[..., ServiceProcess]
) -> AsyncIterator[Callable[..., ServiceProcess]]:
    """The session's `start_service` in this package's namespace; stops what it started and
    deletes the namespace when the package is done."""
    started: list[ServiceProcess] = []

    def _start(service: str, **kwargs: Any) -> ServiceProcess:
        process = start_service(service, CONVOAI_NAMESPACE=gw_infra.namespace, **kwargs)
        started.append(process)
        return process

    yield _start
    for process in reversed(started):
        process.stop()
    await delete_topology(gw_infra.amqp_url, Topology(gw_infra.namespace))


@pytest.fixture
def new_user(infra: TestInfrastructure) -> Callable[[], User]:
    """A fresh user per call, so per-user rate limits never leak between tests."""

    def _new() -> User:
        user_id = new_id(IdKind.USER)
        username = f"u{secrets.token_hex(4)}"
        return User(user_id, username, mint_token(infra, user_id, username))

    return _new


@pytest.fixture(scope="package")
def gateway(start_service: Callable[..., ServiceProcess]) -> ServiceProcess:
    return start_service("gateway", instance_id="gw-a", **GATEWAY_ENV)


@pytest.fixture(scope="package")
def gateway_b(start_service: Callable[..., ServiceProcess]) -> ServiceProcess:
    return start_service("gateway", instance_id="gw-b", **GATEWAY_ENV)


@pytest.fixture
async def http(gateway: ServiceProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        yield client


class Socket:
    """A client WebSocket that speaks JSON frames."""

    def __init__(self, connection: websockets.ClientConnection) -> None:
        self.connection = connection

    async def send(self, frame: dict[str, Any]) -> None:
        await self.connection.send(json.dumps(frame))

    async def recv(self, timeout_s: float = FRAME_TIMEOUT_S) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.connection.recv(), timeout_s)
        frame: dict[str, Any] = json.loads(raw)
        return frame

    async def recv_until(
        self, frame_type: str, timeout_s: float = FRAME_TIMEOUT_S
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The first frame of `frame_type`, and every frame received before it."""
        before: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        while True:
            frame = await self.recv(max(0.01, deadline - time.monotonic()))
            if frame["type"] == frame_type:
                return frame, before
            before.append(frame)

    async def request(self, frame: dict[str, Any], reply_type: str) -> dict[str, Any]:
        await self.send(frame)
        reply, _ = await self.recv_until(reply_type)
        return reply

    async def close(self) -> None:
        await self.connection.close()


async def open_socket(
    service: ServiceProcess, user: User | None = None, **connect_kwargs: Any
) -> Socket:
    """Connect and (given a user) authenticate with the first frame, up to `ready`."""
    connection = await websockets.connect(f"{service.ws_url}/ws", **connect_kwargs)
    socket = Socket(connection)
    if user is not None:
        ready = await socket.request({"type": "auth", "token": user.token}, "ready")
        assert ready["user_id"] == user.user_id
    return socket


async def create_conversation(service: ServiceProcess, user: User, **body: Any) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
        response = await client.post("/conversations/", json=body, headers=user.headers)
    assert response.status_code == 201, response.text
    conversation: dict[str, Any] = response.json()
    return conversation


class BrokerLine:
    """The test's own connection to this run's broker namespace: plays the worker's side of
    the stream contract (publishes frames, answers control commands) and watches events."""

    def __init__(self, connection: aio_pika.abc.AbstractRobustConnection, topology: Topology):
        self.connection = connection
        self.topology = topology
        self.channel: aio_pika.abc.AbstractChannel | None = None

    async def open(self) -> None:
        self.channel = await self.connection.channel()

    async def publish_frame(self, frame: dict[str, Any]) -> None:
        assert self.channel is not None
        exchange = await self.channel.get_exchange(self.topology.stream.name)
        await exchange.publish(
            aio_pika.Message(json.dumps(frame).encode()),
            routing_key=conversation_routing_key(frame["conversation_id"]),
        )

    async def control_queue(self, conversation_id: str) -> aio_pika.abc.AbstractQueue:
        """A queue receiving the control commands of `conversation_id` (like a worker's)."""
        assert self.channel is not None
        queue = await self.channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(self.topology.control.name, conversation_routing_key(conversation_id))
        return queue

    async def events_queue(self, routing_key: str = "#") -> aio_pika.abc.AbstractQueue:
        assert self.channel is not None
        queue = await self.channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(self.topology.events.name, routing_key)
        return queue


@pytest.fixture(scope="package")
async def broker_line(
    gw_infra: TestInfrastructure, gateway: ServiceProcess
) -> AsyncIterator[BrokerLine]:
    # `gateway` first: it declares the namespace's exchanges.
    connection = await aio_pika.connect_robust(gw_infra.amqp_url)
    line = BrokerLine(connection, Topology(gw_infra.namespace))
    await line.open()
    yield line
    await connection.close()


async def next_message(
    queue: aio_pika.abc.AbstractQueue, timeout_s: float = FRAME_TIMEOUT_S
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        message = await queue.get(no_ack=True, fail=False)
        if message is not None:
            body: dict[str, Any] = json.loads(message.body)
            return body
        await asyncio.sleep(0.02)
    raise TimeoutError("no message on the queue")


@pytest.fixture(scope="package")
def mock_llm(start_service: Callable[..., ServiceProcess]) -> ServiceProcess:
    return start_service("mock_llm", instance_id="mock-llm-gw")


def expected_reply_text(prompt: str) -> str:
    """What mock_llm (default settings) answers to a conversation whose last message is `prompt`."""
    from services.mock_llm.service import expected_reply
    from services.mock_llm.settings import MockLLMSettings

    return expected_reply([{"role": "user", "content": prompt}], MockLLMSettings()).text


def worker_env(mock: ServiceProcess) -> dict[str, str]:
    return {
        "CONVOAI_LLM_BASE_URL": f"{mock.url}/v1",
        "CONVOAI_LLM_RETRY_BASE_S": "0.1",
    }


async def slow_down(mock: ServiceProcess, match: str, tokens_per_second: float) -> None:
    """Make mock_llm stream replies to prompts containing `match` at this pace."""
    async with httpx.AsyncClient(base_url=mock.url) as client:
        response = await client.post(
            "/_faults",
            json={"tokens_per_second": tokens_per_second, "match": match, "times": -1},
        )
        response.raise_for_status()


def frame(kind: str, cid: str, mid: str, reply_to: str, seq: int, attempt: int = 1, **extra: Any):
    return {
        "type": kind,
        "conversation_id": cid,
        "message_id": mid,
        "reply_to": reply_to,
        "seq": seq,
        "attempt": attempt,
        **extra,
    }


def completed(cid: str, mid: str, reply_to: str, seq: int, content: str, attempt: int = 1):
    return frame(
        "reply.completed",
        cid,
        mid,
        reply_to,
        seq,
        attempt,
        content=content,
        model="mock",
        usage={"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
    )


def broker_ready(url: str) -> bool:
    checks = httpx.get(f"{url}/ready", timeout=5).json()["checks"]
    return checks["broker"] == "ok" and checks["stream"] == "ok"

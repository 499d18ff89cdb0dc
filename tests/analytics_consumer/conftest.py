"""Analytics test fixtures: each module gets its own database and broker namespace.

Analytics counts everything that reaches its queue, so its exactness tests cannot share a
namespace with tests of other services (their events would be counted too) or with each other.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import httpx
import jwt
import pytest
from sqlalchemy import text

from shared.broker import create_broker, declare_topology, delete_topology
from shared.db import create_engine
from shared.events import Event
from shared.migrations import upgrade_to_head
from shared.topology import Topology
from tests.infra import TestInfrastructure, create_database, drop_database, new_run_id
from tests.processes import ServiceProcess

ANALYTICS_SCHEMAS = {"analytics": "services.analytics_consumer"}


async def eventually(
    condition: Callable[[], Awaitable[Any]], timeout_s: float = 20.0, message: str = ""
) -> Any:
    """Poll an async condition until it is truthy; fail with `message` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(message or f"condition not met within {timeout_s}s")
        await asyncio.sleep(0.05)


class AnalyticsStack:
    """One isolated analytics setup: database, namespace, publisher, consumer processes."""

    def __init__(self, infra: TestInfrastructure, server_url: str) -> None:
        self.infra = infra
        self.server_url = server_url
        self.topology = Topology(infra.namespace)
        self.engine = create_engine(infra.database_url, pool_size=2)
        self.processes: list[ServiceProcess] = []
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None

    async def open(self) -> None:
        broker = create_broker(self.infra.amqp_url)
        await broker.connect()
        await declare_topology(broker, self.topology)
        await broker.stop()
        self._connection = await aio_pika.connect_robust(self.infra.amqp_url)
        self._channel = await self._connection.channel(publisher_confirms=True)
        self._exchange = await self._channel.get_exchange(self.topology.events.name)

    async def close(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        if self._channel is not None:
            await delete_topology(self.infra.amqp_url, self.topology)
        if self._connection is not None:
            await self._connection.close()
        await self.engine.dispose()

    # --- processes ----------------------------------------------------------------------

    def start_consumer(self, wait: bool = True, **env: str) -> ServiceProcess:
        settings = {"CONVOAI_HTTP_METRICS_ENABLED": "false", **env}
        process = ServiceProcess("analytics_consumer", self.infra.env(**settings))
        self.processes.append(process)
        return process.start(wait=wait)

    # --- publishing ---------------------------------------------------------------------

    async def publish(self, event: Event) -> None:
        await self.publish_raw(event.type, event.model_dump_json().encode())

    async def publish_raw(self, routing_key: str, body: bytes) -> None:
        assert self._exchange is not None
        await self._exchange.publish(
            aio_pika.Message(
                body,
                content_type="application/json",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=routing_key,
        )

    async def publish_all(self, events: list[Event], concurrency: int = 100) -> None:
        """Publish with confirms, many in flight at once (order within a window not kept)."""
        for start in range(0, len(events), concurrency):
            await asyncio.gather(*(self.publish(e) for e in events[start : start + concurrency]))

    async def requeue_some(self, count: int) -> int:
        """Take `count` deliveries and close the channel unacked: RabbitMQ redelivers them."""
        assert self._connection is not None
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=count)
        queue = await channel.get_queue(self.topology.analytics_events.name)
        taken = 0
        for _ in range(count):
            message = await queue.get(no_ack=False, fail=False, timeout=5)
            if message is None:
                break
            taken += 1
        await channel.close()
        return taken

    async def queue_depth(self, dead: bool = False) -> int:
        assert self._connection is not None
        queue = self.topology.analytics_events
        name = self.topology.dead_letter_queue(queue).name if dead else queue.name
        channel = await self._connection.channel()
        try:
            declared = await channel.declare_queue(name, passive=True)
            return int(declared.declaration_result.message_count or 0)
        finally:
            await channel.close()

    async def dead_letters(self) -> list[bytes]:
        """Drain `<ns>.analytics.events.dead` and return the bodies."""
        assert self._connection is not None
        channel = await self._connection.channel()
        queue = await channel.get_queue(
            self.topology.dead_letter_queue(self.topology.analytics_events).name
        )
        bodies = []
        while (message := await queue.get(no_ack=True, fail=False, timeout=5)) is not None:
            bodies.append(message.body)
        await channel.close()
        return bodies

    # --- reading ------------------------------------------------------------------------

    async def metric(self, name: str) -> float:
        async with self.engine.connect() as conn:
            value = await conn.scalar(
                text("SELECT value FROM analytics.system_metrics WHERE name = :n"), {"n": name}
            )
        return float(value or 0)

    async def scalar(self, sql: str) -> Any:
        async with self.engine.connect() as conn:
            return await conn.scalar(text(sql))

    async def ingested(self, events: int, duplicates: int | None = None) -> bool:
        if await self.metric("events_ingested") != events:
            return False
        return duplicates is None or await self.metric("duplicates_skipped") == duplicates

    def token(self, *roles: str, user_id: str = "admin-1", **overrides: Any) -> str:
        now = datetime.now(UTC)
        claims: dict[str, Any] = {
            "sub": user_id,
            "username": user_id,
            "roles": list(roles),
            "iss": "convoai-auth",
            "aud": "convoai",
            "iat": now,
            "nbf": now,
            "exp": now + timedelta(minutes=5),
            "jti": uuid.uuid4().hex,
            "typ": "access",
            **overrides,
        }
        return jwt.encode(claims, self.infra.jwt_secret, algorithm="HS256")

    def client(self, process: ServiceProcess, *roles: str) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token(*roles)}"} if roles else {}
        return httpx.Client(base_url=f"{process.url}/api/v1/analytics", headers=headers, timeout=10)


@pytest.fixture(scope="module")
async def stack(_server_urls: tuple[str, str]) -> AsyncIterator[AnalyticsStack]:
    """This module's own migrated database, namespace and topology; removed afterwards."""
    server_url, amqp_url = _server_urls
    run_id = new_run_id()
    name = f"convoai_test_{run_id}a"
    database_url = await create_database(server_url, name)
    await upgrade_to_head(database_url, ANALYTICS_SCHEMAS)
    infra = TestInfrastructure(
        database_url=database_url,
        amqp_url=amqp_url,
        namespace=f"t{run_id}a",
        jwt_secret=secrets.token_urlsafe(48),
    )
    analytics = AnalyticsStack(infra, server_url)
    await analytics.open()
    yield analytics
    await analytics.close()
    await drop_database(server_url, name)


@pytest.fixture(scope="module")
def consumer(stack: AnalyticsStack) -> Iterator[ServiceProcess]:
    yield stack.start_consumer()

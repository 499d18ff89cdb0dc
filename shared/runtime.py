"""What every service process holds at run time, built once by its composition root: settings,
broker, database, topology, and the queues it works through (`consume`)."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from faststream.rabbit import RabbitBroker
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shared.broker import EventPublisher, create_broker, declare_topology
from shared.db import create_engine, create_session_factory, ping_database
from shared.queue_consumer import MessageHandler, QueueConsumer
from shared.settings import ServiceSettings
from shared.topology import Topology

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 30.0
"""How long a stopping process lets the handlers of deliveries in flight (a streaming reply, a
file being indexed) finish before their deliveries go back to the queue."""


@dataclass
class ServiceRuntime:
    """Settings, broker, database and topology of one process."""

    service: str
    settings: ServiceSettings
    broker: RabbitBroker
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    topology: Topology
    publisher: EventPublisher
    instance_id: str
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _consumers: list[tuple[QueueConsumer, float]] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        service: str,
        settings: ServiceSettings,
        *,
        prefetch: int | None = None,
        db_pool_size: int = 10,
    ) -> ServiceRuntime:
        topology = Topology(settings.namespace)
        broker = create_broker(settings.amqp_url, prefetch=prefetch)
        engine = create_engine(settings.database_url, pool_size=db_pool_size)
        instance_id = settings.instance_id or f"{service}-{secrets.token_hex(4)}"
        return cls(
            service=service,
            settings=settings,
            broker=broker,
            engine=engine,
            sessions=create_session_factory(engine),
            topology=topology,
            publisher=EventPublisher(
                settings.amqp_url, topology, connection_name=f"{instance_id}-events"
            ),
            instance_id=instance_id,
        )

    def consume(
        self,
        queue: str,
        handler: MessageHandler,
        *,
        prefetch: int,
        drain_timeout_s: float = DRAIN_TIMEOUT_S,
        on_channel_closed: Callable[[], None] | None = None,
        wait_before_attaching: Callable[[], Awaitable[None]] | None = None,
    ) -> QueueConsumer:
        """A `QueueConsumer` of `queue` on a connection of its own (named after the instance and
        the queue) that `start()` attaches once the topology exists and `stop()` detaches
        first, giving the handlers in flight up to `drain_timeout_s` to finish."""
        consumer = QueueConsumer(
            self.settings.amqp_url,
            queue,
            handler,
            prefetch=prefetch,
            connection_name=f"{self.instance_id}-{queue.removeprefix(self.topology.name(''))}",
            on_channel_closed=on_channel_closed,
            wait_before_attaching=wait_before_attaching,
        )
        self._consumers.append((consumer, drain_timeout_s))
        return consumer

    async def start(self) -> None:
        """Connect, declare the topology, start subscribers registered on the broker, then
        attach the queue consumers."""
        await self.broker.connect()
        await declare_topology(self.broker, self.topology)
        await self.broker.start()
        for consumer, _ in self._consumers:
            await consumer.start(self.settings.broker_connect_timeout_s)
        log.info("service started", extra={"service": self.service, "instance": self.instance_id})

    def run_in_background(self, coro: object, name: str) -> None:
        """Keep a long-running task (relay, flusher) alive until `stop()`."""
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)  # type: ignore[arg-type]
        self._tasks.append(task)

    async def stop(self) -> None:
        """Graceful: consumers and subscribers finish in-flight messages (or return them), then
        disconnect."""
        for consumer, drain_timeout_s in self._consumers:
            await consumer.stop(drain_timeout_s)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.broker.stop()
        await self.publisher.close()
        await self.engine.dispose()
        log.info("service stopped", extra={"service": self.service, "instance": self.instance_id})

    async def check_broker(self) -> None:
        if not await self.broker.ping(timeout=2.0):
            raise ConnectionError("broker not connected")

    async def check_database(self) -> None:
        await ping_database(self.engine)

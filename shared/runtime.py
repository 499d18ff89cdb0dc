"""What every service process holds at run time, built once by its composition root."""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass, field

from faststream.rabbit import RabbitBroker
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shared.broker import EventPublisher, create_broker, declare_topology
from shared.db import create_engine, create_session_factory, ping_database
from shared.settings import ServiceSettings
from shared.topology import Topology

log = logging.getLogger(__name__)


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

    async def start(self) -> None:
        """Connect, declare the topology, start subscribers registered on the broker."""
        await self.broker.connect()
        await declare_topology(self.broker, self.topology)
        await self.broker.start()
        log.info("service started", extra={"service": self.service, "instance": self.instance_id})

    def run_in_background(self, coro: object, name: str) -> None:
        """Keep a long-running task (relay, flusher) alive until `stop()`."""
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)  # type: ignore[arg-type]
        self._tasks.append(task)

    async def stop(self) -> None:
        """Graceful: subscribers finish in-flight messages (or return them), then disconnect."""
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

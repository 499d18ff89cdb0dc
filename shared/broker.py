"""Connecting to RabbitMQ, declaring the shared topology, publishing events with confirms."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aio_pika
import aiormq
from faststream.rabbit import Channel, RabbitBroker

from shared.confirmed_channel import ConfirmedChannel
from shared.events import Event
from shared.logging import redact_url
from shared.topology import Topology

log = logging.getLogger(__name__)


class BrokerUnavailable(RuntimeError):
    """RabbitMQ did not answer within the start-up budget."""


def create_broker(
    amqp_url: str, *, prefetch: int | None = None, graceful_timeout: float = 30.0
) -> RabbitBroker:
    """A FastStream broker on a robust connection; publisher confirms are on for every channel."""
    return RabbitBroker(
        amqp_url,
        default_channel=Channel(prefetch_count=prefetch, publisher_confirms=True),
        graceful_timeout=graceful_timeout,
        reconnect_interval=1.0,
        log_level=logging.DEBUG,
        app_id="convoai",
    )


async def wait_for_broker(amqp_url: str, timeout_s: float) -> None:
    """Retry until RabbitMQ accepts a connection, logging each attempt; raise after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    attempt = 0
    while True:
        attempt += 1
        try:
            connection = await aio_pika.connect(amqp_url, timeout=5)
        except (TimeoutError, OSError, aio_pika.exceptions.AMQPError) as exc:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerUnavailable(
                    f"RabbitMQ unreachable at {redact_url(amqp_url)} after {attempt} attempts "
                    f"({type(exc).__name__}: {exc})"
                ) from None
            log.warning(
                "broker unreachable, retrying",
                extra={"url": redact_url(amqp_url), "attempt": attempt, "error": str(exc)},
            )
            await asyncio.sleep(min(1.0, remaining))
        else:
            await connection.close()
            return


async def declare_topology(broker: RabbitBroker, topology: Topology) -> None:
    """Declare every durable exchange and queue (idempotent), so no event is routed nowhere."""
    for exchange in topology.durable_exchanges:
        await broker.declare_exchange(exchange)
    events = await broker.declare_exchange(topology.events)
    dead_letters = await broker.declare_exchange(topology.dead_letters)
    for queue in topology.event_queues:
        declared = await broker.declare_queue(queue)
        await declared.bind(events, routing_key=queue.routing_key)
        dead = topology.dead_letter_queue(queue)
        declared_dead = await broker.declare_queue(dead)
        await declared_dead.bind(dead_letters, routing_key=queue.name)


async def delete_topology(amqp_url: str, topology: Topology) -> None:
    """Remove what `declare_topology` made (a finished test run's or benchmark's namespace)."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        for queue in topology.event_queues:
            await channel.queue_delete(queue.name)
            await channel.queue_delete(topology.dead_letter_queue(queue).name)
        await channel.queue_delete(topology.revocations_stream)
        for exchange in topology.durable_exchanges:
            await channel.exchange_delete(exchange.name)


PERSISTENT = int(aio_pika.DeliveryMode.PERSISTENT)


class EventPublisher:
    """Publishes domain events to `<ns>.events`: persistent, confirmed, routing key = type.

    On its own connection and channel (`ConfirmedChannel`), not the FastStream broker's: a
    channel that stops confirming must be replaced, and FastStream keeps its channel for life.
    """

    def __init__(self, amqp_url: str, topology: Topology, *, connection_name: str) -> None:
        self._channel = ConfirmedChannel(
            amqp_url, topology.events.name, connection_name=connection_name
        )

    async def publish(self, event: Event) -> None:
        await self.publish_raw(
            event.type, event.model_dump_json().encode(), str(event.event_id), event.correlation_id
        )

    async def publish_raw(
        self,
        routing_key: str,
        body: bytes,
        message_id: str,
        correlation_id: str | None = None,
        headers: dict[str, Any] | None = None,
    ) -> None:
        # AMQP properties built directly: an `aio_pika.Message` (which guards every attribute
        # it sets) and its conversion cost more than the publish itself (yappi, CPU clock).
        properties = aiormq.spec.Basic.Properties(
            content_type="application/json",
            delivery_mode=PERSISTENT,
            message_id=message_id,
            correlation_id=correlation_id,
            app_id="convoai",
            headers=headers,
        )
        await self._channel.publish(body, properties, routing_key)

    @property
    def channels_replaced(self) -> int:
        return self._channel.channels_replaced

    async def close(self) -> None:
        await self._channel.close()

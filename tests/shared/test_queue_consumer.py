"""`QueueConsumer` on a real broker: manual acks, re-attaching after the connection drops or
the broker cancels the consumer."""

from __future__ import annotations

import asyncio
import secrets

import aio_pika
import aiormq.abc
import pytest

from shared.events import MessageSent
from shared.queue_consumer import Disposition, QueueConsumer, settle_each_event
from tests.faults import TcpProxy


@pytest.fixture
async def queue_name(infra):
    """A durable queue of this run's namespace, deleted afterwards."""
    name = f"{infra.namespace}.consumer-test.{secrets.token_hex(3)}"
    connection = await aio_pika.connect(infra.amqp_url)
    channel = await connection.channel()
    await channel.declare_queue(name, durable=True)
    yield name
    await channel.queue_delete(name)
    await connection.close()


async def _publish(amqp_url: str, queue: str, *bodies: bytes) -> None:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        for body in bodies:
            await channel.default_exchange.publish(aio_pika.Message(body), routing_key=queue)


async def _message_count(amqp_url: str, queue: str) -> int:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        declared = await (await connection.channel()).declare_queue(queue, passive=True)
        return declared.declaration_result.message_count or 0


class Received:
    def __init__(self, ack: bool = True) -> None:
        self.bodies: list[bytes] = []
        self.arrived = asyncio.Condition()
        self.ack = ack

    async def __call__(self, message: aiormq.abc.DeliveredMessage) -> None:
        if self.ack:
            await message.channel.basic_ack(message.delivery_tag)
        async with self.arrived:
            self.bodies.append(message.body)
            self.arrived.notify_all()

    async def wait_for(self, count: int, timeout_s: float = 15) -> None:
        async with asyncio.timeout(timeout_s), self.arrived:
            await self.arrived.wait_for(lambda: len(self.bodies) >= count)

    async def wait_for_body(self, body: bytes, timeout_s: float = 15) -> None:
        async with asyncio.timeout(timeout_s), self.arrived:
            await self.arrived.wait_for(lambda: body in self.bodies)


async def test_acked_deliveries_leave_the_queue_and_counts_are_visible(infra, queue_name):
    received = Received()
    consumer = QueueConsumer(
        infra.amqp_url, queue_name, received, prefetch=10, connection_name="test-consumer"
    )
    await consumer.start()
    try:
        await consumer.check_connected()
        await _publish(infra.amqp_url, queue_name, b"one", b"two", b"three")
        await received.wait_for(3)
        assert received.bodies == [b"one", b"two", b"three"]
        assert await consumer.message_counts(queue_name) == [0]
    finally:
        await consumer.stop()
    assert await _message_count(infra.amqp_url, queue_name) == 0


async def test_unacked_deliveries_return_to_the_queue_when_it_stops(infra, queue_name):
    received = Received(ack=False)
    consumer = QueueConsumer(
        infra.amqp_url, queue_name, received, prefetch=10, connection_name="test-consumer"
    )
    await consumer.start()
    await _publish(infra.amqp_url, queue_name, b"kept")
    await received.wait_for(1)
    await consumer.stop()
    assert await _message_count(infra.amqp_url, queue_name) == 1


async def test_consumer_re_attaches_after_the_connection_drops(infra, queue_name):
    proxy = TcpProxy.for_url(infra.amqp_url).start()
    received = Received()
    lost = asyncio.Event()
    consumer = QueueConsumer(
        proxy.proxied_url(infra.amqp_url),
        queue_name,
        received,
        prefetch=10,
        connection_name="test-consumer",
        on_channel_closed=lost.set,
    )
    try:
        await consumer.start()
        await _publish(infra.amqp_url, queue_name, b"before")
        await received.wait_for(1)
        proxy.cut()
        async with asyncio.timeout(15):
            await lost.wait()
        proxy.restore()
        await _publish(infra.amqp_url, queue_name, b"after")
        # A redelivered "before" (its ack lost with the connection) may come too; "after" must.
        await received.wait_for_body(b"after", timeout_s=30)
        assert consumer.connected
    finally:
        await consumer.stop()
        proxy.close()


async def test_consumer_re_attaches_when_the_broker_cancels_it(infra, queue_name):
    received = Received()
    lost = asyncio.Event()
    consumer = QueueConsumer(
        infra.amqp_url,
        queue_name,
        received,
        prefetch=10,
        connection_name="test-consumer",
        on_channel_closed=lost.set,
    )
    await consumer.start()
    try:
        # Deleting the queue makes RabbitMQ cancel its consumers, as losing the queue's node does.
        connection = await aio_pika.connect(infra.amqp_url)
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete(queue_name)
            async with asyncio.timeout(15):
                await lost.wait()
            await channel.declare_queue(queue_name, durable=True)
        await _publish(infra.amqp_url, queue_name, b"again")
        await received.wait_for_body(b"again", timeout_s=30)
    finally:
        await consumer.stop()


@pytest.fixture
async def queue_with_dead_letters(infra):
    """A durable queue whose rejected deliveries go to a dead-letter queue; both deleted after."""
    name = f"{infra.namespace}.consumer-test.{secrets.token_hex(3)}"
    dead = f"{name}.dead"
    connection = await aio_pika.connect(infra.amqp_url)
    channel = await connection.channel()
    await channel.declare_queue(dead, durable=True)
    await channel.declare_queue(
        name,
        durable=True,
        arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead},
    )
    yield name, dead
    await channel.queue_delete(name)
    await channel.queue_delete(dead)
    await connection.close()


class FlakyService:
    """Cannot handle a request the first time it sees it; handles it when redelivered."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bool]] = []
        self.changed = asyncio.Condition()

    async def __call__(self, event: MessageSent, *, redelivered: bool) -> Disposition:
        async with self.changed:
            self.seen.append((event.message_id, redelivered))
            self.changed.notify_all()
        return Disposition.ACK if redelivered else Disposition.REQUEUE


async def test_each_event_is_acked_requeued_or_dead_lettered_on_the_broker(
    infra, queue_with_dead_letters
):
    queue, dead = queue_with_dead_letters
    service = FlakyService()
    consumer = QueueConsumer(
        infra.amqp_url,
        queue,
        settle_each_event(MessageSent, service, what="test request", requeue_delay_s=0),
        prefetch=10,
        connection_name="test-consumer",
    )
    await consumer.start()
    try:
        event = MessageSent(producer="test", conversation_id="c1", message_id="m1")
        await _publish(infra.amqp_url, queue, b"{not an event", event.model_dump_json().encode())
        async with asyncio.timeout(15), service.changed:
            await service.changed.wait_for(lambda: len(service.seen) == 2)
        assert service.seen == [("m1", False), ("m1", True)]
        async with asyncio.timeout(15):
            while await consumer.message_counts(queue, dead) != [0, 1]:
                await asyncio.sleep(0.05)
    finally:
        await consumer.stop()


async def test_stop_lets_the_handler_in_flight_finish_and_acknowledge(infra, queue_name):
    started, release = asyncio.Event(), asyncio.Event()

    async def slow(message: aiormq.abc.DeliveredMessage) -> None:
        started.set()
        await release.wait()
        await message.channel.basic_ack(message.delivery_tag)

    consumer = QueueConsumer(
        infra.amqp_url, queue_name, slow, prefetch=10, connection_name="test-consumer"
    )
    await consumer.start()
    await _publish(infra.amqp_url, queue_name, b"in flight")
    async with asyncio.timeout(15):
        await started.wait()
    stopping = asyncio.create_task(consumer.stop(drain_timeout_s=30))
    async with asyncio.timeout(15):
        while not (stopping.done() or _consumer_cancelled(consumer)):
            await asyncio.sleep(0.01)
    # No more deliveries come, but the handler in flight still holds an open channel.
    assert not stopping.done()
    release.set()
    await stopping
    assert await _message_count(infra.amqp_url, queue_name) == 0


def _consumer_cancelled(consumer: QueueConsumer) -> bool:
    """The broker confirmed `basic.cancel` (aiormq forgets the consumer tag on CancelOk)."""
    channel = consumer._channel
    return channel is not None and consumer._consumer_tag not in channel.consumers


async def test_consumer_attaches_only_once_what_it_waits_for_is_up(infra, queue_name):
    asked, up = asyncio.Event(), asyncio.Event()

    async def frames_connected() -> None:
        asked.set()
        await up.wait()

    received = Received()
    consumer = QueueConsumer(
        infra.amqp_url,
        queue_name,
        received,
        prefetch=10,
        connection_name="test-consumer",
        wait_before_attaching=frames_connected,
    )
    await _publish(infra.amqp_url, queue_name, b"waits")
    starting = asyncio.create_task(consumer.start())
    try:
        async with asyncio.timeout(15):
            await asked.wait()
        # It has not even connected yet, so the delivery is still in the queue.
        assert not consumer.connected
        assert await _message_count(infra.amqp_url, queue_name) == 1
        up.set()
        await starting
        await received.wait_for_body(b"waits")
    finally:
        await consumer.stop()

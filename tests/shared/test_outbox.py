"""The outbox publishes after commit, never on rollback, and survives a broker outage."""

from __future__ import annotations

import asyncio
import json
import secrets
from datetime import timedelta

import aio_pika
import pytest
from sqlalchemy import MetaData, Table, func, select, text

from shared.broker import EventPublisher, create_broker, declare_topology
from shared.db import create_engine, create_session_factory
from shared.events import ConversationCreated
from shared.outbox import Outbox, outbox_table
from shared.topology import Topology
from tests.faults import TcpProxy


@pytest.fixture
async def event_tap(infra):
    """A private queue bound to every event of this run's namespace."""
    connection = await aio_pika.connect(infra.amqp_url)
    channel = await connection.channel()
    exchange = await channel.declare_exchange(
        Topology(infra.namespace).events.name, aio_pika.ExchangeType.TOPIC, durable=True
    )
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(exchange, "conversation.*")
    yield queue
    await connection.close()


async def _received(queue, n: int, timeout: float = 10.0) -> list[dict]:
    bodies: list[dict] = []
    async with asyncio.timeout(timeout):
        while len(bodies) < n:
            message = await queue.get(fail=False)
            if message is None:
                await asyncio.sleep(0.02)
                continue
            await message.ack()
            bodies.append(json.loads(message.body))
    return bodies


async def _outbox_rows(sessions, table: Table) -> int:
    async with sessions() as session:
        return (await session.execute(select(func.count()).select_from(table))).scalar_one()


@pytest.fixture
async def database(infra):
    engine = create_engine(infra.database_url, pool_size=2)
    yield create_session_factory(engine)
    await engine.dispose()


@pytest.fixture
async def own_outbox(infra):
    """An outbox table in a schema of its own: the session's other stacks run relays on the
    shared database, and one of them must not publish (and delete) a row this test awaits."""
    schema = f"outbox_{secrets.token_hex(6)}"
    table = outbox_table(MetaData(schema=schema))
    engine = create_engine(infra.database_url, pool_size=1)
    async with engine.begin() as conn:
        await conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        await conn.run_sync(table.metadata.create_all)
    yield table
    async with engine.begin() as conn:
        await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    await engine.dispose()


async def _broker(amqp_url: str, namespace: str):
    broker = create_broker(amqp_url)
    await broker.connect()
    await declare_topology(broker, Topology(namespace))
    await broker.start()
    return broker


async def test_committed_event_is_published_once_and_rolled_back_one_never(
    infra, database, event_tap, own_outbox
):
    broker = await _broker(infra.amqp_url, infra.namespace)
    publisher = EventPublisher(infra.amqp_url, Topology(infra.namespace), connection_name="t")
    outbox = Outbox(own_outbox, database, publisher)
    try:
        committed = ConversationCreated(producer="test", conversation_id="c" * 12, user_id="u" * 16)
        async with outbox.unit_of_work() as session:
            await outbox.stage(session, committed)
        with pytest.raises(RuntimeError):
            async with outbox.unit_of_work() as session:
                await outbox.stage(
                    session, ConversationCreated(producer="test", conversation_id="r" * 12)
                )
                raise RuntimeError("business rule failed")
        bodies = await _received(event_tap, 1)
        assert bodies[0]["event_id"] == str(committed.event_id)
        await outbox.drain_background()
        assert await _outbox_rows(database, own_outbox) == 0
        # One publisher, one channel, in order: once a later marker event has arrived, a
        # second copy of the first (or the rolled-back one) would have arrived before it.
        marker = ConversationCreated(producer="test", conversation_id="k" * 12, user_id="u" * 16)
        async with outbox.unit_of_work() as session:
            await outbox.stage(session, marker)
        [next_body] = await _received(event_tap, 1)
        assert next_body["event_id"] == str(marker.event_id)
        await outbox.drain_background()
        assert await _outbox_rows(database, own_outbox) == 0
    finally:
        await publisher.close()
        await broker.stop()


async def test_event_accepted_during_broker_outage_is_relayed_when_it_returns(
    infra, database, event_tap, own_outbox
):
    proxy = TcpProxy.for_url(infra.amqp_url).start()
    proxied_url = proxy.proxied_url(infra.amqp_url)
    broker = await _broker(proxied_url, infra.namespace)
    publisher = EventPublisher(proxied_url, Topology(infra.namespace), connection_name="t")
    outbox = Outbox(
        own_outbox,
        database,
        publisher,
        relay_grace=timedelta(0),
        poll_interval_s=0.1,
    )
    relay = asyncio.create_task(outbox.relay_forever())
    try:
        proxy.cut()
        event = ConversationCreated(producer="test", conversation_id="o" * 12, user_id="u" * 16)
        async with outbox.unit_of_work() as session:
            await outbox.stage(session, event)
        assert await _outbox_rows(database, own_outbox) == 1, (
            "the accepted event must wait in the outbox"
        )
        proxy.restore()
        bodies = await _received(event_tap, 1, timeout=30)
        assert bodies[0]["event_id"] == str(event.event_id)
        async with asyncio.timeout(10):
            while await _outbox_rows(database, own_outbox):
                await asyncio.sleep(0.05)
    finally:
        relay.cancel()
        await asyncio.gather(relay, return_exceptions=True)
        await publisher.close()
        await broker.stop()
        proxy.close()


async def test_an_event_the_fast_path_could_not_publish_is_due_for_the_relay_at_once(
    infra, database, event_tap, own_outbox
):
    """A dead broker node must not add a relay grace period to an event's wait."""
    proxy = TcpProxy.for_url(infra.amqp_url).start()
    proxied_url = proxy.proxied_url(infra.amqp_url)
    publisher = EventPublisher(proxied_url, Topology(infra.namespace), connection_name="t")
    outbox = Outbox(own_outbox, database, publisher, relay_grace=timedelta(minutes=5))
    try:
        proxy.cut()
        event = ConversationCreated(producer="test", conversation_id="f" * 12, user_id="u" * 16)
        async with outbox.unit_of_work() as session:
            await outbox.stage(session, event)
        await outbox.drain_background()
        age = await outbox.oldest_age_s()
        assert age is not None and age < 60
        proxy.restore()
        assert await outbox.relay_once() == 1, "not due although the fast path gave it up"
        bodies = await _received(event_tap, 1)
        assert bodies[0]["event_id"] == str(event.event_id)
        assert await outbox.oldest_age_s() is None
    finally:
        await publisher.close()
        proxy.close()


class _GatedPublisher:
    """A publisher whose confirms wait until the test opens the gate (a busy broker)."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.published: list[str] = []

    async def publish_raw(self, routing_key, body, message_id, correlation_id=None, headers=None):
        await self.gate.wait()
        self.published.append(message_id)


async def test_a_confirm_slower_than_the_grace_does_not_have_another_relay_publish_it_again(
    database, own_outbox
):
    """Two processes share an outbox table (the gateway and the chat workers share `chat`'s):
    while one still waits for its fast-path confirm, the other's relay must leave the row."""
    grace = timedelta(seconds=0.3)
    slow, other = _GatedPublisher(), _GatedPublisher()
    other.gate.set()
    writer = Outbox(own_outbox, database, slow, relay_grace=grace)  # type: ignore[arg-type]
    relay = Outbox(own_outbox, database, other, relay_grace=grace)  # type: ignore[arg-type]
    event = ConversationCreated(producer="test", conversation_id="s" * 12, user_id="u" * 16)
    async with writer.unit_of_work(wait_for_publish=False) as session:
        await writer.stage(session, event)
    committed_at = asyncio.get_running_loop().time()
    # Well past the grace period, several times over, while the confirm still has not come.
    while asyncio.get_running_loop().time() - committed_at < 5 * grace.total_seconds():
        await relay.relay_once()
        await asyncio.sleep(0.05)
    assert other.published == [], "another relay published an event still in flight"
    slow.gate.set()
    async with asyncio.timeout(10):
        while await _outbox_rows(database, own_outbox):
            await asyncio.sleep(0.05)
    await writer.drain_background()
    assert slow.published == [str(event.event_id)]
    assert other.published == []

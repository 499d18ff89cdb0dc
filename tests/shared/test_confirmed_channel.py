"""A channel whose publishes are nacked is replaced, not retried forever; a dropped connection is
replaced on the next publish."""

from __future__ import annotations

import secrets

import aio_pika
import aiormq
import pytest

from shared.confirmed_channel import ConfirmedChannel, PublishFailed


@pytest.fixture
async def full_queue(infra):
    """An exchange whose only queue refuses publishes (`reject-publish`) once it holds one."""
    connection = await aio_pika.connect(infra.amqp_url)
    channel = await connection.channel()
    name = f"{infra.namespace}.confirm-test-{secrets.token_hex(3)}"
    exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.FANOUT, auto_delete=True)
    queue = await channel.declare_queue(
        name, auto_delete=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
    )
    await queue.bind(exchange)
    yield exchange, queue
    await queue.delete(if_unused=False, if_empty=False)
    await connection.close()


async def test_a_nacked_publish_retires_the_channel_and_fails_after_one_fresh_try(
    infra, full_queue
):
    exchange, queue = full_queue
    publisher = ConfirmedChannel(infra.amqp_url, exchange.name, connection_name="confirm-test")
    try:
        await publisher.publish(b"first", aiormq.spec.Basic.Properties(), "")
        with pytest.raises(PublishFailed, match="DeliveryError"):
            await publisher.publish(b"refused", aiormq.spec.Basic.Properties(), "")
        assert publisher.channels_replaced == 2  # the nacking channel, then the fresh one

        # Room again: the next publish goes out on a new channel of the same connection.
        message = await queue.get()
        await message.ack()
        await publisher.publish(b"second", aiormq.spec.Basic.Properties(), "")
        assert (await queue.get()).body == b"second"
        assert publisher.connections_replaced == 0
    finally:
        await publisher.close()


async def test_a_lost_connection_is_replaced_on_the_next_publish(infra, full_queue):
    exchange, queue = full_queue
    publisher = ConfirmedChannel(infra.amqp_url, exchange.name, connection_name="confirm-test")
    try:
        await publisher.publish(b"one", aiormq.spec.Basic.Properties(), "")
        await (await queue.get()).ack()
        assert publisher._connection is not None
        await publisher._connection.close()  # what a dead broker node does to it
        await publisher.publish(b"two", aiormq.spec.Basic.Properties(), "")
        assert (await queue.get()).body == b"two"
        assert publisher.connections_replaced == 1
    finally:
        await publisher.close()

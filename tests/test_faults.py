"""The outage proxy really drops and restores connections (other outage tests rely on it)."""

import aio_pika
import pytest

from tests.faults import TcpProxy


async def test_proxy_cut_drops_connections_and_restore_accepts_new_ones(infra):
    proxy = TcpProxy.for_url(infra.amqp_url).start()
    try:
        url = proxy.proxied_url(infra.amqp_url)
        connection = await aio_pika.connect(url)
        assert not connection.is_closed
        proxy.cut()
        channel_error = None
        try:
            channel = await connection.channel()
            await channel.declare_queue(exclusive=True)
        except Exception as exc:
            channel_error = exc
        assert channel_error is not None, "an open connection must not survive cut()"
        with pytest.raises((ConnectionError, OSError, aio_pika.exceptions.AMQPError)):
            await aio_pika.connect(url, timeout=2)
        proxy.restore()
        again = await aio_pika.connect(url)
        assert not again.is_closed
        await again.close()
    finally:
        await connection.close()
        proxy.close()

"""A publisher-confirms channel that is replaced, not retried, once it stops confirming.

On a RabbitMQ cluster a long-lived channel can outlive its usefulness without closing: after the
node leading a quorum queue dies, a channel on a surviving node may go on nacking every publish
(or never answer) for as long as that node stays down, while a channel opened afresh on the same
node publishes at once (issue 16). So a nack, a confirm that does not come within
`confirm_timeout_s`, or any channel error retires the channel: the publish is retried once on a
new channel, and the connection is replaced as well when it is closed or a new channel cannot be
opened on it. The connection goes to `amqp_url` — with a cluster, a balancer or a Service that
sends each new connection to a live node (deploy/README.md).

A retried publish may reach the broker twice (its first confirm was lost, not refused): every
consumer is idempotent on `event_id`, which is why retrying is safe.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import suppress
from typing import cast

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange
from aiormq.channel import Channel as AmqpChannel

from shared.logging import redact_url

log = logging.getLogger(__name__)

CONFIRM_TIMEOUT_S = 5.0
"""A confirm slower than this retires the channel. A quorum queue elects a new leader within a
few seconds of its old one dying; a channel still silent after that is stuck, not slow."""
CONNECT_TIMEOUT_S = 5.0
ATTEMPTS = 2
"""One retry on a fresh channel: a channel that just opened and still fails means the broker is
down, and the caller (the outbox) keeps the event for later."""


class PublishFailed(ConnectionError):
    """The event was not confirmed by the broker; it stays with the caller."""


class ConfirmedChannel:
    """One connection and one confirming channel to the `exchange`, replaced when they fail."""

    def __init__(
        self,
        amqp_url: str,
        exchange: str,
        *,
        connection_name: str,
        confirm_timeout_s: float = CONFIRM_TIMEOUT_S,
    ) -> None:
        self._amqp_url = amqp_url
        self._exchange_name = exchange
        self._connection_name = connection_name
        self._confirm_timeout_s = confirm_timeout_s
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._underlay: AmqpChannel | None = None
        """The channel's aiormq channel, which publishes without waiting for the drain."""
        self._opening = asyncio.Lock()
        self._closed = False
        self.channels_replaced = 0
        self.connections_replaced = 0

    async def publish(
        self, body: bytes, properties: aiormq.spec.Basic.Properties, routing_key: str
    ) -> None:
        """Publish and wait for the broker's confirm; raise `PublishFailed` when it never came."""
        error: BaseException | None = None
        for _ in range(ATTEMPTS):
            exchange = await self._current_exchange()
            channel = self._underlay
            assert channel is not None  # set with the exchange, nothing awaited since
            try:
                # `wait=False`: the frame goes to the connection's writer without waiting,
                # under the channel's lock, for the socket to drain. Waiting cost each publish
                # several turns of a busy event loop, one publish after another: under load a
                # chat worker's confirms took seconds (some past the timeout) while the same
                # broker confirmed in milliseconds. Each publish still awaits its own confirm.
                await channel.basic_publish(
                    body,
                    exchange=self._exchange_name,
                    routing_key=routing_key,
                    properties=properties,
                    mandatory=False,
                    timeout=self._confirm_timeout_s,
                    wait=False,
                )
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = exc
                await self._retire(exchange, exc)
        raise PublishFailed(f"not confirmed: {type(error).__name__}: {error}") from error

    async def close(self) -> None:
        self._closed = True
        connection, self._connection = self._connection, None
        self._channel = self._exchange = self._underlay = None
        if connection is not None and not connection.is_closed:
            with suppress(Exception):
                await connection.close()

    @property
    def connected(self) -> bool:
        return self._connection is not None and not self._connection.is_closed

    async def _current_exchange(self) -> AbstractExchange:
        exchange = self._usable_exchange()
        if exchange is not None:
            return exchange
        async with self._opening:
            # Another publisher may have opened one while this one waited for the lock.
            exchange = self._usable_exchange()
            if exchange is not None:
                return exchange
            if self._closed:
                raise PublishFailed("publisher closed")
            try:
                return await self._open_channel()
            except Exception as exc:
                raise PublishFailed(f"cannot open a channel: {type(exc).__name__}") from exc

    def _usable_exchange(self) -> AbstractExchange | None:
        if self._channel is None or self._channel.is_closed:
            return None
        return self._exchange

    async def _open_channel(self) -> AbstractExchange:
        if self._connection is None or self._connection.is_closed:
            await self._reconnect()
        assert self._connection is not None
        try:
            channel = await asyncio.wait_for(
                self._connection.channel(publisher_confirms=True), CONNECT_TIMEOUT_S
            )
        except Exception:
            # A connection that cannot open a channel is no better than a closed one.
            await self._drop_connection()
            await self._reconnect()
            assert self._connection is not None
            channel = await asyncio.wait_for(
                self._connection.channel(publisher_confirms=True), CONNECT_TIMEOUT_S
            )
        self._channel = channel
        self._underlay = cast(AmqpChannel, await channel.get_underlay_channel())
        self._exchange = await channel.get_exchange(self._exchange_name, ensure=False)
        return self._exchange

    async def _reconnect(self) -> None:
        if self._connection is not None:
            self.connections_replaced += 1
        self._connection = await aio_pika.connect(
            self._amqp_url,
            timeout=CONNECT_TIMEOUT_S,
            client_properties={"connection_name": self._connection_name},
        )

    async def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with suppress(Exception):
                await asyncio.wait_for(connection.close(), CONNECT_TIMEOUT_S)

    async def _retire(self, exchange: AbstractExchange, error: BaseException) -> None:
        """Stop using `exchange`'s channel (if it is still the current one)."""
        if exchange is not self._exchange:
            return  # a concurrent publisher retired it already
        self._exchange = self._underlay = None
        channel, self._channel = self._channel, None
        self.channels_replaced += 1
        log.warning(
            "publish not confirmed, replacing the channel",
            extra={
                "url": redact_url(self._amqp_url),
                "connection": self._connection_name,
                "error": f"{type(error).__name__}: {error}"[:200],
            },
        )
        if channel is not None and not channel.is_closed:
            # Closing waits for the broker's answer; a stuck channel may never give one.
            task = asyncio.create_task(_close_quietly(channel))
            _closing.add(task)
            task.add_done_callback(_closing.discard)


_closing: set[asyncio.Task[None]] = set()


async def _close_quietly(channel: AbstractChannel) -> None:
    with suppress(Exception):
        await asyncio.wait_for(channel.close(), CONNECT_TIMEOUT_S)

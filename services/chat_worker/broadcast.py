"""The worker's side of the live stream: frames out on `<ns>.stream`, commands in on `<ns>.control`.

Frames are transient and need no publisher confirms, so they use their own aio-pika connection
and channel (the FastStream broker's channel confirms every publish). One task publishes them in
order from a queue, so frames of one reply never overtake each other and the hot path only
appends to a list.

The control queue is bound to `conv.*`: every worker hears every command and acts on those for
replies it holds. A gateway that knows the holder from the reply row (`messages.worker_id`)
sends a command to that worker's queue alone instead, through the default exchange; the worker
then always answers, so "it holds nothing there" and "it is gone" (the broker returns a command
for a queue that no longer exists) are both known at once.

Why a wildcard: commands are rare (a cancel, a resync per subscribe while a reply streams),
whereas binding and unbinding `conv.<id>` around every reply costs two broker round trips that
are serialised per channel; measured under load they added up to a second before a reply could
start. A wildcard binding also cannot miss a command sent between a reply's start and its
binding.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any, cast

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
    AbstractRobustExchange,
)
from aiormq.channel import Channel as AmqpChannel
from pydantic import ValidationError

from shared import tracing
from shared.stream import ControlCommand, StreamFrame, control_command_adapter
from shared.topology import Topology, conversation_routing_key

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 5.0
FRAME_BATCH = 200
BATCH_TIMEOUT_S = 60.0
"""A batch may wait this long on broker flow control before its frames count as lost; a dead
connection fails at once instead (the channel raises)."""
CONTROL_BINDING = "conv.*"
RECONNECT_POLL_S = 0.1

CommandHandler = Callable[[ControlCommand], Awaitable[bool]]
"""Applies a command; True when this worker acted on it (then a `reply_to` gets an answer)."""

DEFAULT_EXCHANGE = ""
"""What a delivery names as its exchange when it was sent to this worker's queue alone."""


class FrameChannel:
    def __init__(self, amqp_url: str, topology: Topology, instance_id: str) -> None:
        self._amqp_url = amqp_url
        self._topology = topology
        self.instance_id = instance_id
        """Names this worker's control queue, and the replies it holds (their `worker_id`)."""
        self._connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractRobustChannel | None = None
        self._stream: AbstractRobustExchange | None = None
        self._control: AbstractRobustExchange | None = None
        self._control_queue: AbstractQueue | None = None
        self._outgoing: asyncio.Queue[tuple[str, bytes, dict[str, Any] | None]] = asyncio.Queue()
        self._publisher: asyncio.Task[None] | None = None
        self.frames_published = 0
        self.frames_dropped = 0

    async def start(self, on_command: CommandHandler) -> None:
        self._connection = await aio_pika.connect_robust(
            self._amqp_url, client_properties={"connection_name": f"{self.instance_id}-frames"}
        )
        publish_channel: AbstractRobustChannel = await self._connection.channel(
            publisher_confirms=False
        )
        self._publish_channel = publish_channel
        control_channel: AbstractRobustChannel = await self._connection.channel()
        topology = self._topology
        self._stream = await publish_channel.declare_exchange(
            topology.stream.name, aio_pika.ExchangeType.TOPIC, durable=True
        )
        self._control = await control_channel.declare_exchange(
            topology.control.name, aio_pika.ExchangeType.TOPIC, durable=True
        )
        spec = topology.worker_control_queue(self.instance_id)
        self._control_queue = await control_channel.declare_queue(
            spec.name, exclusive=True, auto_delete=True, durable=False
        )

        async def deliver(message: AbstractIncomingMessage) -> None:
            try:
                command = control_command_adapter.validate_json(message.body)
            except ValidationError:
                log.warning("ignoring a malformed control command")
                return
            try:
                acted = await on_command(command)
                # A broadcast is answered only by a worker that acted (the others stay silent);
                # a command addressed to this worker alone is always answered.
                addressed = message.exchange == DEFAULT_EXCHANGE
                if message.reply_to and (acted or addressed):
                    await control_channel.default_exchange.publish(
                        aio_pika.Message(
                            json.dumps({"type": "control.answer", "acted": acted}).encode(),
                            correlation_id=message.correlation_id,
                            delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
                        ),
                        routing_key=message.reply_to,
                    )
            except Exception:
                log.exception("control command failed", extra={"type": command.type})

        await self._control_queue.bind(self._control, CONTROL_BINDING)
        await self._control_queue.consume(deliver, no_ack=True)
        self._publisher = asyncio.create_task(self._publish_forever(), name="frame-publisher")

    async def stop(self) -> None:
        if self._publisher is not None:
            # Let frames already queued (terminal frames of replies that just finished) go out.
            with suppress(TimeoutError):
                await asyncio.wait_for(self._drained(), 2.0)
            self._publisher.cancel()
            with suppress(asyncio.CancelledError):
                await self._publisher
        if self._connection is not None:
            await self._connection.close()

    async def _drained(self) -> None:
        await self._outgoing.join()

    def publish(self, frame: StreamFrame) -> None:
        """Queue `frame` for `conv.<id>`; frames leave in the order they were queued."""
        # A reply's start and end carry its trace to the gateways; deltas do not (one span
        # per delta would bury the turn in spans).
        headers = tracing.inject_headers() if frame.type != "reply.delta" else None
        self._outgoing.put_nowait(
            (
                conversation_routing_key(frame.conversation_id),
                frame.model_dump_json().encode(),
                headers,
            )
        )

    async def _publish_forever(self) -> None:
        assert self._publish_channel is not None and self._stream is not None
        properties = aiormq.spec.Basic.Properties(
            content_type="application/json", delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT
        )
        while True:
            batch = [await self._outgoing.get()]
            # Everything queued goes out in this turn of the event loop: awaiting each frame
            # separately (one loop iteration apiece) capped a busy worker at a few dozen
            # frames per second while hundreds of replies streamed (measured).
            while len(batch) < FRAME_BATCH and not self._outgoing.empty():
                batch.append(self._outgoing.get_nowait())
            sent = 0
            try:
                channel = cast(AmqpChannel, await self._publish_channel.get_underlay_channel())
                async with asyncio.timeout(BATCH_TIMEOUT_S):
                    for routing_key, body, headers in batch:
                        # Not mandatory: a conversation nobody watches just drops its frames (a
                        # returned message would cost a round of handling each). `wait=False`
                        # hands the frame to the connection's writer without waiting for the
                        # socket to drain; this task is the only publisher, so frames still
                        # leave in order.
                        await channel.basic_publish(
                            body,
                            exchange=self._stream.name,
                            routing_key=routing_key,
                            properties=properties
                            if headers is None
                            else _with_headers(properties, headers),
                            mandatory=False,
                            wait=False,
                        )
                        sent += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Frames are transient: a client that missed some resyncs from the stored
                # partial or the worker's snapshot. The reply itself is safe in the database.
                self.frames_dropped += len(batch) - sent
                log.warning("frames not published", extra={"error": repr(exc)})
            finally:
                self.frames_published += sent
                for _ in batch:
                    self._outgoing.task_done()

    async def wait_until_connected(self) -> None:
        """Return once frames can be published again (at once unless the broker was lost)."""
        while True:
            try:
                await self.check_connected()
                return
            except ConnectionError:
                # aio-pika reconnects on its own schedule, with no event for "channel restored".
                await asyncio.sleep(RECONNECT_POLL_S)

    async def check_connected(self) -> None:
        """For `/ready`: frames and commands travel on this connection."""
        if self._connection is None or not self._connection.connected.is_set():
            raise ConnectionError("frame connection not connected")
        if self._publish_channel is None or self._publish_channel.is_closed:
            raise ConnectionError("frame channel closed")

    @property
    def pending_frames(self) -> int:
        return self._outgoing.qsize()


def _with_headers(
    properties: aiormq.spec.Basic.Properties, headers: dict[str, Any]
) -> aiormq.spec.Basic.Properties:
    return aiormq.spec.Basic.Properties(
        content_type=properties.content_type,
        delivery_mode=properties.delivery_mode,
        headers=headers,
    )

"""Live reply frames from `<ns>.stream` to the sockets of this gateway instance (ARCHITECTURE.md).

One exclusive, auto-delete queue per instance, bound to `conv.<id>` while at least one local
watcher (a socket, or a `?wait=true` request) looks at that conversation; the binding is
reference-counted and removed with its last watcher. The queue lives on its own robust aio-pika
connection: after a broker outage aio-pika re-declares the queue and restores its bindings, then
`StreamFanout` consumes it again and tells every watcher, so they can resynchronise what they
missed. Frames are consumed on the channel's aiormq channel, not through aio-pika's `consume`:
its `IncomingMessage` wrapper and extra task per delivery cost ~8 % of a gateway's CPU per chat
turn (yappi, CPU clock), and a turn brings three frames.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from typing import Protocol

import aio_pika
import aiormq.abc
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractQueue,
    AbstractRobustConnection,
)
from pamqp.commands import Basic
from pydantic import ValidationError

from shared import tracing
from shared.logging import redact_url
from shared.metrics import BROKER_RECONNECTS
from shared.stream import CancelCommand, ResyncCommand, StreamFrame, stream_frame_adapter
from shared.topology import Topology, conversation_routing_key

log = logging.getLogger(__name__)


class FrameWatcher(Protocol):
    def deliver(self, frame: StreamFrame, wire: str | None = None) -> None:
        """Called on the event loop for every frame of the watched conversation; must not block.
        `wire`: the frame's JSON as it arrived, for a watcher that forwards it unchanged."""

    def broker_recovered(self) -> None:
        """The connection came back: frames may have been lost while it was down."""


class StreamUnavailable(ConnectionError):
    """The broker connection is down; live frames cannot be watched right now."""


def worker_acted(answer: bytes) -> bool:
    """What a worker's answer to a command sent with `reply_to` says: whether it acted. An
    answer without `acted` comes from a worker that answers only when it did."""
    try:
        acted = json.loads(answer).get("acted", True)
    except (ValueError, AttributeError):
        return True
    return acted is not False


class StreamFanout:
    def __init__(self, amqp_url: str, topology: Topology, instance_id: str) -> None:
        self._amqp_url = amqp_url
        self._topology = topology
        self._instance_id = instance_id
        self._watchers: dict[str, set[FrameWatcher]] = {}
        self._unbound: set[str] = set()
        """Watched conversations whose binding failed during an outage (made on recovery)."""
        self._binding_lock = asyncio.Lock()
        self._answers: dict[str, asyncio.Future[bool]] = {}
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._stream: AbstractExchange | None = None
        self._control: AbstractExchange | None = None
        self._direct: AbstractExchange | None = None
        self.frames_received = 0

    async def start(self) -> None:
        self._connection = await aio_pika.connect_robust(
            self._amqp_url,
            reconnect_interval=1.0,
            client_properties={"connection_name": f"{self._instance_id}-stream"},
        )
        # Confirms tell a routed control command from one no worker queue received (none runs).
        channel = self._channel = await self._connection.channel(publisher_confirms=True)
        self._stream = await channel.declare_exchange(
            self._topology.stream.name, aio_pika.ExchangeType.TOPIC, durable=True
        )
        self._control = await channel.declare_exchange(
            self._topology.control.name, aio_pika.ExchangeType.TOPIC, durable=True
        )
        self._direct = channel.default_exchange
        spec = self._topology.gateway_stream_queue(self._instance_id)
        self._queue = await channel.declare_queue(
            spec.name, exclusive=True, auto_delete=True, durable=False
        )
        await self._consume()
        self._connection.reconnect_callbacks.add(self._on_reconnect)
        log.info("stream fan-out started", extra={"queue": spec.name})

    async def stop(self) -> None:
        if self._connection is not None:
            await self._connection.close()

    @property
    def connected(self) -> bool:
        # Cleared as soon as the connection drops, set again when it is re-established:
        # checked first so nothing waits on a robust channel's recovery during an outage.
        return self._connection is not None and self._connection.connected.is_set()

    def watched_conversations(self) -> int:
        return len(self._watchers)

    async def watch(self, conversation_id: str, watcher: FrameWatcher) -> None:
        """Start delivering `conversation_id`'s frames to `watcher` (binds on the first one).

        While the broker is unreachable the watcher is registered anyway and the binding made
        on recovery, when every watcher is told to resynchronise: chat keeps working from the
        database during an outage and live frames resume after it.
        """
        async with self._binding_lock:
            watchers = self._watchers.get(conversation_id)
            if watchers is None:
                watchers = self._watchers[conversation_id] = set()
                try:
                    await self._bind(conversation_id)
                except StreamUnavailable as exc:
                    self._unbound.add(conversation_id)
                    log.warning(
                        "bind deferred until the broker is back",
                        extra={"conversation_id": conversation_id, "error": str(exc)},
                    )
            watchers.add(watcher)

    async def unwatch(self, conversation_id: str, watcher: FrameWatcher) -> None:
        async with self._binding_lock:
            watchers = self._watchers.get(conversation_id)
            if watchers is None or watcher not in watchers:
                return
            watchers.discard(watcher)
            if watchers:
                return
            del self._watchers[conversation_id]
            if conversation_id in self._unbound:
                self._unbound.discard(conversation_id)
                return
            try:
                assert self._queue is not None and self._stream is not None
                await self._queue.unbind(
                    self._stream, conversation_routing_key(conversation_id), timeout=5
                )
            except Exception as exc:
                # A binding left behind only costs traffic: frames without watchers are dropped.
                log.warning(
                    "unbind failed", extra={"conversation_id": conversation_id, "error": repr(exc)}
                )

    async def _bind(self, conversation_id: str) -> None:
        if self._queue is None or self._stream is None or not self.connected:
            raise StreamUnavailable("stream connection is not open")
        try:
            await self._queue.bind(
                self._stream, conversation_routing_key(conversation_id), timeout=5
            )
        except Exception as exc:
            raise StreamUnavailable(f"cannot bind: {type(exc).__name__}") from exc

    async def request_control(self, command: CancelCommand, answer_timeout_s: float) -> bool:
        """Send `command` and wait for the worker that acts on it to say so: True when one did
        within `answer_timeout_s`. Every worker hears every command (`conv.*`), so only an
        answer tells "a reply was there to cancel" from "nothing is being generated"."""
        return bool(await self._ask(command, answer_timeout_s))

    async def ask_worker(
        self, worker_id: str, command: ResyncCommand, answer_timeout_s: float
    ) -> bool | None:
        """Send `command` to the worker `worker_id` alone (the holder a reply row names) and
        wait for its answer: whether it holds a reply in the command's conversation. False at
        once when that worker no longer runs: its exclusive control queue went with its
        connection, so the broker returns the command. None when it did not answer in time."""
        return await self._ask(command, answer_timeout_s, worker_id)

    async def _ask(
        self,
        command: CancelCommand | ResyncCommand,
        answer_timeout_s: float,
        worker_id: str | None = None,
    ) -> bool | None:
        if self._queue is None:
            raise StreamUnavailable("stream connection is not open")
        correlation_id = secrets.token_urlsafe(12)
        answered: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._answers[correlation_id] = answered
        try:
            routed = await self.publish_control(
                command,
                reply_to=self._queue.name,
                correlation_id=correlation_id,
                worker_id=worker_id,
            )
            if not routed:
                return False
            done, _ = await asyncio.wait({answered}, timeout=answer_timeout_s)
            return answered.result() if done else None
        finally:
            self._answers.pop(correlation_id, None)

    async def publish_control(
        self,
        command: CancelCommand | ResyncCommand,
        *,
        reply_to: str | None = None,
        correlation_id: str | None = None,
        worker_id: str | None = None,
    ) -> bool:
        """Send a command to whichever worker holds the conversation's reply (transient), or
        to the worker `worker_id` alone.

        False when no worker's control queue took it: no worker is running (each binds
        `conv.*` for its whole life rather than per reply), or `worker_id`'s is gone. True does
        not mean a reply is streaming there: only a worker holding one acts on the command.
        """
        exchange, routing_key = self._control, conversation_routing_key(command.conversation_id)
        if worker_id is not None:
            exchange = self._direct
            routing_key = self._topology.worker_control_queue(worker_id).name
        if exchange is None or not self.connected:
            raise StreamUnavailable("stream connection is not open")
        try:
            confirmation = await exchange.publish(
                aio_pika.Message(
                    command.model_dump_json().encode(),
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.NOT_PERSISTENT,
                    reply_to=reply_to,
                    correlation_id=correlation_id,
                ),
                routing_key=routing_key,
                mandatory=True,
                timeout=5,
            )
        except Exception as exc:
            raise StreamUnavailable(f"cannot publish: {type(exc).__name__}") from exc
        return not isinstance(getattr(confirmation, "delivery", None), Basic.Return)

    async def _consume(self) -> None:
        """Consume the queue on the channel's current aiormq channel (again after a recovery:
        only what aio-pika's own `consume` registered would be restored by it)."""
        assert self._channel is not None and self._queue is not None
        underlay = await self._channel.get_underlay_channel()
        await underlay.basic_consume(self._queue.name, self._on_message, no_ack=True)

    async def _on_message(self, message: aiormq.abc.DeliveredMessage) -> None:
        properties = message.header.properties
        answered = self._answers.get(properties.correlation_id or "")
        if answered is not None:
            if not answered.done():
                answered.set_result(worker_acted(message.body))
            return
        try:
            frame = stream_frame_adapter.validate_json(message.body)
        except ValidationError:
            log.warning("undecodable stream frame dropped", extra={"bytes": len(message.body)})
            return
        self.frames_received += 1
        # Decoded once for every watcher: a socket forwards the worker's JSON as it came rather
        # than dumping the frame again (~10 % of the gateway's CPU per frame, profiled).
        wire = message.body.decode()
        with tracing.consumer_span(f"{frame.type} deliver", properties.headers, traced_only=True):
            for watcher in tuple(self._watchers.get(frame.conversation_id, ())):
                try:
                    watcher.deliver(frame, wire)
                except Exception:
                    log.exception(
                        "frame watcher failed", extra={"conversation_id": frame.conversation_id}
                    )

    async def _on_reconnect(self, *_args: object) -> None:
        BROKER_RECONNECTS.labels("stream").inc()
        try:
            await self._consume()
        except Exception as exc:
            # The connection dropped again at once; its next recovery consumes again.
            log.warning("stream consumer not restored", extra={"error": repr(exc)})
            return
        log.info(
            "stream connection recovered",
            extra={"url": redact_url(self._amqp_url), "conversations": len(self._watchers)},
        )
        async with self._binding_lock:
            for conversation_id in tuple(self._unbound):
                try:
                    await self._bind(conversation_id)
                except StreamUnavailable:
                    break  # down again; the next recovery retries
                self._unbound.discard(conversation_id)
        for watchers in tuple(self._watchers.values()):
            for watcher in tuple(watchers):
                watcher.broker_recovered()

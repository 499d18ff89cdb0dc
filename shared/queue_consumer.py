"""Reading one queue directly: manual acknowledgements, a prefetch window, reconnection on its own.

The one consumer style for the queues a process works through (chat requests, analytics events,
knowledge files). Not a FastStream subscriber: its per-message pipeline (decoder, logging
middleware, dependency injection) cost ~0.6-1 ms of Python per message. Not aio-pika's
`Queue.consume` either: its `IncomingMessage` and the extra task per delivery measured ~30 µs
more CPU per message than aiormq's own consumer (~115 against ~84 µs,
`bench/queue_consumer_cost.py`), so this talks aiormq (aio-pika's core) and does the
reconnecting itself.

`QueueConsumer.run_forever` connects, consumes, and after any loss (broker restart, node loss,
the queue's consumer cancelled by the broker) reconnects and re-attaches, with backoff.
`on_channel_closed` tells the owner that the deliveries it still holds can no longer be settled:
the broker redelivers them on the next channel. `wait_before_attaching` holds every (re)attach
until what handling a delivery needs is back too (the chat worker's frame connection: a reply
streamed while its frames cannot be published reaches no client).

A handler settles each delivery itself (`message.channel.basic_ack(message.delivery_tag)`,
`basic_reject`, `basic_nack`), as the analytics consumer does for its batches, or through
`settle_each_event`: one event per delivery, acknowledged, returned to the queue or
dead-lettered by what the service says.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Any, Protocol, TypeVar

import aiormq
import aiormq.abc
from pydantic import ValidationError

from shared import tracing
from shared.events import Event, UnknownEventType, parse_event

log = logging.getLogger(__name__)

MessageHandler = Callable[[aiormq.abc.DeliveredMessage], Awaitable[None]]
RECONNECT_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)


class ConsumerCancelled(ConnectionError):
    """The broker cancelled the consumer (its queue was deleted or lost with a node)."""


class QueueConsumer:
    """Consumes `queue` (which must exist) with `prefetch` unacknowledged deliveries at most."""

    def __init__(
        self,
        amqp_url: str,
        queue: str,
        handler: MessageHandler,
        *,
        prefetch: int,
        connection_name: str,
        on_channel_closed: Callable[[], None] | None = None,
        wait_before_attaching: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.queue_name = queue
        self._amqp_url = amqp_url
        self._handler = handler
        self._prefetch = prefetch
        self._connection_name = connection_name
        self._on_channel_closed = on_channel_closed
        self._wait_before_attaching = wait_before_attaching
        self._connection: aiormq.abc.AbstractConnection | None = None
        self._channel: aiormq.abc.AbstractChannel | None = None
        self._consumer_tag: str | None = None
        self._attached = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[Any]] = set()

    async def start(self, connect_timeout_s: float = 30.0) -> None:
        """Run `run_forever` in the background; return once consuming, raise `TimeoutError`
        if that does not happen within `connect_timeout_s`."""
        self._runner = asyncio.create_task(self.run_forever(), name=f"consume:{self.queue_name}")
        await asyncio.wait_for(self._attached.wait(), connect_timeout_s)

    async def run_forever(self) -> None:
        """Connect, consume, and reconnect after any failure (deliveries are redelivered)."""
        attempt = 0
        while True:
            try:
                await self._consume_until_lost()
                attempt = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "broker connection lost",
                    extra={
                        "queue": self.queue_name,
                        "error": f"{type(exc).__name__}: {exc}",
                        "attempt": attempt,
                    },
                )
            finally:
                await self._forget_connection()
            await asyncio.sleep(RECONNECT_BACKOFF_S[min(attempt, len(RECONNECT_BACKOFF_S) - 1)])
            attempt += 1

    async def _consume_until_lost(self) -> None:
        if self._wait_before_attaching is not None:
            await self._wait_before_attaching()
        self._connection = await aiormq.connect(
            self._amqp_url, client_properties={"connection_name": self._connection_name}
        )
        channel = await self._connection.channel()
        await channel.basic_qos(prefetch_count=self._prefetch)
        cancelled = asyncio.Event()

        def on_cancel(frame: aiormq.spec.Basic.Cancel) -> None:
            if frame.consumer_tag == self._consumer_tag:
                cancelled.set()

        # The broker cancels a consumer whose queue went away (e.g. its node was lost): without
        # this the channel would stay open and silent. Dropping the connection re-attaches.
        channel.on_consumer_cancel_callbacks.add(on_cancel)
        consume = await channel.basic_consume(self.queue_name, self._on_message)
        self._consumer_tag = consume.consumer_tag
        self._channel = channel
        self._attached.set()
        log.info("consuming", extra={"queue": self.queue_name})
        waiting = asyncio.ensure_future(cancelled.wait())
        try:
            await asyncio.wait({channel.closing, waiting}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()
        if cancelled.is_set():
            raise ConsumerCancelled(f"consumer of {self.queue_name} cancelled by the broker")

    async def _forget_connection(self) -> None:
        connection = self._connection
        self._channel = None
        self._connection = None
        self._consumer_tag = None
        self._attached.clear()
        if self._on_channel_closed is not None:
            self._on_channel_closed()
        if connection is not None and not connection.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.shield(connection.close())

    @property
    def connected(self) -> bool:
        return self._channel is not None and not self._channel.is_closed

    async def check_connected(self) -> None:
        """For `/ready`."""
        if not self.connected:
            raise ConnectionError(f"not consuming {self.queue_name}")

    async def message_counts(self, *queues: str) -> list[int]:
        """How many messages wait in each of `queues` (a passive declare on a probe channel)."""
        connection = self._connection
        if connection is None or connection.is_closed:
            raise ConnectionError("not connected")
        probe = await connection.channel()
        try:
            counts = []
            for name in queues:
                declared = await probe.queue_declare(name, passive=True)
                counts.append(declared.message_count or 0)
            return counts
        finally:
            if not probe.is_closed:
                with contextlib.suppress(Exception):
                    await probe.close()

    async def stop(self, drain_timeout_s: float = 0.0) -> None:
        """Stop taking deliveries, let handlers in flight finish (up to `drain_timeout_s`),
        disconnect; whatever is still unacknowledged goes back to the queue."""
        channel, tag = self._channel, self._consumer_tag
        if channel is not None and tag is not None and not channel.is_closed:
            with contextlib.suppress(Exception):
                await channel.basic_cancel(tag)
        if self._in_flight and drain_timeout_s > 0:
            await asyncio.wait(set(self._in_flight), timeout=drain_timeout_s)
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        else:
            await self._forget_connection()

    async def _on_message(self, message: aiormq.abc.DeliveredMessage) -> None:
        # aiormq runs each delivery's handler in a task of its own.
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
        try:
            await self._handler(message)
        finally:
            if task is not None:
                self._in_flight.discard(task)


# --- one event per delivery ---------------------------------------------------------------


class Disposition(Enum):
    """What becomes of a delivery once its event's handler is done."""

    ACK = "ack"
    """Handled, or nothing left to do: it leaves the queue."""
    REQUEUE = "requeue"
    """Not handled, through no fault of its own (a dependency is down): back to the queue after
    a pause; the queue's delivery limit dead-letters one that keeps coming back."""


E = TypeVar("E", bound=Event)
E_contra = TypeVar("E_contra", bound=Event, contravariant=True)


class EventHandler(Protocol[E_contra]):
    """The service's side: handle one event (seen before if `redelivered`), say what to do."""

    def __call__(self, event: E_contra, *, redelivered: bool) -> Awaitable[Disposition]: ...


def settle_each_event(
    event_type: type[E],
    handle: EventHandler[E],
    *,
    what: str,
    requeue_delay_s: float,
    log_fields: Callable[[E], dict[str, Any]] | None = None,
    span_name: str | None = None,
) -> MessageHandler:
    """A `QueueConsumer` handler for a queue of `event_type` events, each delivery on its own.

    A delivery that is not such an event is rejected without requeue at once (the queue
    dead-letters it); otherwise `handle` says ack or requeue, and a `handle` that raises
    requeues (one bad request must not stop the consumer). A requeue waits `requeue_delay_s`
    first, so a failing dependency is not hammered in a loop. `what` names the event in logs,
    `log_fields` picks the fields that identify it there, `span_name` (when tracing) is the
    span the handling runs in, continuing the producer's trace.
    """

    async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
        if span_name is None:
            await settle(message)
        else:
            with tracing.consumer_span(span_name, message.header.properties.headers):
                await settle(message)

    async def settle(message: aiormq.abc.DeliveredMessage) -> None:
        channel, tag = message.channel, message.delivery_tag
        if tag is None:  # only a basic.get answer has none
            return
        try:
            # One pass over the bytes for the expected type; `parse_event` only when it is not.
            event = event_type.model_validate_json(message.body)
        except ValidationError as exc:
            if not _is_another_event(message.body):
                log.warning(f"malformed {what} dead-lettered", extra={"error": str(exc)[:200]})
            await _settle(channel.basic_reject(tag, requeue=False), what)
            return
        try:
            disposition = await handle(event, redelivered=bool(message.redelivered))
        except Exception:
            fields = log_fields(event) if log_fields else {"event_id": str(event.event_id)}
            log.exception(f"{what} failed, back to the queue", extra=fields)
            disposition = Disposition.REQUEUE
        if disposition is Disposition.ACK:
            await _settle(channel.basic_ack(tag), what)
        else:
            await asyncio.sleep(requeue_delay_s)
            await _settle(channel.basic_nack(tag, requeue=True), what)

    return on_message


def _is_another_event(body: bytes) -> bool:
    try:
        parse_event(body)
    except (ValidationError, UnknownEventType, ValueError):
        return False
    return True


async def _settle(operation: Awaitable[Any], what: str) -> None:
    """Ack/nack/reject; when the channel is gone the broker redelivers, which is safe."""
    try:
        await operation
    except Exception as exc:
        log.warning(f"could not settle a {what}", extra={"error": repr(exc)})

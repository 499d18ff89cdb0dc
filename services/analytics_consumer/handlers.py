"""The `analytics.events` consumer: batched, acknowledged only after the batch committed.

Deliveries are gathered for up to `batch_window_ms` or `batch_max_events`, whichever comes
first, and written in one transaction (see `ingest.py`); the broker's prefetch bounds how many
are held. The queue is read through `shared.queue_consumer` (aiormq, reconnecting by itself)
rather than a FastStream subscriber: FastStream's per-message pipeline costs about a millisecond
per event on this hardware, which alone would cap ingestion far below the 5 000 events/s the
dashboard needs.

Failure handling:
- a delivery that is not a valid event (bad JSON, missing or mistyped fields) is rejected
  without requeue at once, so RabbitMQ dead-letters it to `<queue>.dead`;
- a batch whose transaction fails for a reason other than connectivity is retried event by
  event, so the one bad event is rejected and its neighbours still count;
- a lost database connection is not the events' fault: the batch is held (not nacked, which
  would spend the queue's delivery limit and dead-letter good events) and retried with
  backoff, while the prefetch limit stops RabbitMQ from sending more. Consumption pauses and
  resumes by itself; if the process dies meanwhile, the broker redelivers and `event_id`
  deduplication keeps the totals exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiormq
import aiormq.abc
from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from services.analytics_consumer import metrics
from services.analytics_consumer.ingest import EventIngestor, Incoming, UnknownEvent
from services.analytics_consumer.upserts import write_system_metrics
from shared import tracing
from shared.db import is_database_unavailable, transaction
from shared.db_retry import DatabaseRetry, describe_database_error
from shared.events import Event, KnownEvent, UnknownEventType, parse_event
from shared.metrics import BROKER_RECONNECTS
from shared.runtime import ServiceRuntime

log = logging.getLogger(__name__)

_json_object: TypeAdapter[dict[str, Any]] = TypeAdapter(dict[str, Any])
_known_event: TypeAdapter[KnownEvent] = TypeAdapter(KnownEvent)


class MalformedEvent(ValueError):
    """The delivery is not an event this or any version of the catalogue could mean."""


class _Envelope(BaseModel):
    """What an event of an unknown type must still carry to be counted once."""

    model_config = ConfigDict(extra="ignore")

    event_id: uuid.UUID
    type: str
    occurred_at: datetime


def decode_event(body: bytes) -> Incoming:
    """Bytes → a known event or an `UnknownEvent`; `MalformedEvent` for anything else."""
    try:
        # The common case in one pass over the bytes; the slower path below says why not.
        event: Event = _known_event.validate_json(body)
        return event
    except ValidationError:
        pass
    try:
        data = _json_object.validate_json(body)
    except ValidationError as exc:
        raise MalformedEvent("not a JSON object") from exc
    try:
        return parse_event(data)
    except UnknownEventType:
        try:
            envelope = _Envelope.model_validate(data)
            return UnknownEvent(
                event_id=envelope.event_id,
                type=envelope.type,
                occurred_at=envelope.occurred_at,
            )
        except ValidationError as exc:
            raise MalformedEvent("unknown type without a valid envelope") from exc
    except ValidationError as exc:
        fields = sorted({".".join(map(str, e["loc"])) for e in exc.errors()})
        raise MalformedEvent(f"invalid fields: {', '.join(fields)}") from exc


@dataclass(slots=True)
class Delivery:
    channel: aiormq.abc.AbstractChannel
    tag: int
    body: bytes
    received_at: float
    headers: dict[str, Any] | None = None


@dataclass(frozen=True)
class ConsumerConfig:
    queue: str
    dead_letter_queue: str
    prefetch: int
    batch_max_events: int
    batch_window_s: float
    max_backoff_s: float
    monitor_interval_s: float


class EventConsumer:
    """Owns its AMQP connection, the pending deliveries, and the batch writer."""

    def __init__(
        self,
        config: ConsumerConfig,
        runtime: ServiceRuntime,
        ingestor: EventIngestor,
    ) -> None:
        self._config = config
        self._sessions = runtime.sessions
        self._ingestor = ingestor
        self._db_retry = DatabaseRetry(max_delay_s=config.max_backoff_s)
        self._pending: deque[Delivery] = deque()
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        self.queue = runtime.consume(
            config.queue,
            self._on_message,
            prefetch=config.prefetch,
            # Deliveries wait in `_pending`, not in handlers: nothing in flight to drain.
            drain_timeout_s=0,
            # Unacknowledged deliveries of a dead channel come back on the next one.
            on_channel_closed=self._forget_pending,
        )
        # Counted while no transaction could carry them; written with the next batch.
        self._pending_counters: dict[str, float] = {}
        self._unknown_types_logged: set[str] = set()

    @property
    def connected(self) -> bool:
        return self.queue.connected

    async def check_connected(self) -> None:
        await self.queue.check_connected()

    # --- receiving ------------------------------------------------------------------------

    async def _close_channel(self, channel: aiormq.abc.AbstractChannel) -> None:
        with contextlib.suppress(Exception):
            await channel.close()

    def _forget_pending(self) -> None:
        BROKER_RECONNECTS.labels("analytics.events").inc()
        self._pending.clear()
        self._full.clear()

    async def _on_message(self, message: aiormq.abc.DeliveredMessage) -> None:
        tag = message.delivery_tag
        if tag is None:
            return
        self._pending.append(
            Delivery(
                message.channel,
                tag,
                message.body,
                time.monotonic(),
                message.header.properties.headers,
            )
        )
        self._arrived.set()
        if len(self._pending) >= self._config.batch_max_events:
            self._full.set()

    # --- writing --------------------------------------------------------------------------

    async def write_forever(self) -> None:
        """Take batches off the pending deliveries and commit them, one transaction each."""
        while True:
            await self._arrived.wait()
            if not self._pending:
                self._arrived.clear()
                continue
            age = time.monotonic() - self._pending[0].received_at
            remaining = self._config.batch_window_s - age
            if remaining > 0 and len(self._pending) < self._config.batch_max_events:
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), remaining)
            size = min(len(self._pending), self._config.batch_max_events)
            batch = [self._pending.popleft() for _ in range(size)]
            if not self._pending:
                self._arrived.clear()
            if len(self._pending) < self._config.batch_max_events:
                self._full.clear()
            if not batch:
                continue
            try:
                await self.write_batch(batch)
            except Exception:
                # A bug, not bad data or an outage: drop the channel so that every delivery it
                # holds comes back, instead of leaving them unacknowledged forever.
                log.exception("batch writer failed; returning its deliveries to the queue")
                await self._close_channel(batch[0].channel)

    async def write_batch(self, batch: Sequence[Delivery]) -> None:
        good: list[tuple[Delivery, Incoming]] = []
        for delivery in batch:
            try:
                good.append((delivery, decode_event(delivery.body)))
            except MalformedEvent as exc:
                log.warning(
                    "malformed event dead-lettered",
                    extra={"reason": str(exc), "bytes": len(delivery.body)},
                )
                await self._settle(delivery, accept=False)
                metrics.DEAD_LETTERED.labels("malformed").inc()
                self._count("malformed_events", "dead_lettered")
        if not good:
            return
        events = [event for _, event in good]
        try:
            with tracing.linked_span("analytics.events ingest", (d.headers for d, _ in good)):
                await self._commit_with_retry(events)
        except Exception as exc:
            log.warning(
                "batch failed, isolating the bad event",
                extra={"events": len(events), "error": type(exc).__name__},
            )
            await self._write_one_by_one(good)
            return
        await self._ack_all([delivery for delivery, _ in good])
        metrics.observe_committed(
            [e.type for e in events], _lag_gauge(events)["consumer_lag_ms"] / 1000
        )
        self._log_unknown(events)

    async def _commit_with_retry(self, events: Sequence[Incoming]) -> None:
        """Commit, waiting out database outages; raise on any other failure."""

        async def commit() -> dict[str, float]:
            counters = dict(self._pending_counters)
            async with transaction(self._sessions) as session:
                await self._ingestor.ingest(
                    session, events, extra_counters=counters, gauges=_lag_gauge(events)
                )
            return counters

        written = await self._db_retry.run(commit, what="consumption")
        self._forget_counters(written)

    async def _write_one_by_one(self, items: Sequence[tuple[Delivery, Incoming]]) -> None:
        for delivery, event in items:
            try:
                await self._commit_with_retry([event])
            except Exception as exc:
                log.error(
                    "poison event dead-lettered",
                    extra={
                        "event_id": str(event.event_id),
                        "type": event.type,
                        "error": describe_database_error(exc),
                    },
                )
                await self._settle(delivery, accept=False)
                metrics.DEAD_LETTERED.labels("poison").inc()
                self._count("poison_events", "dead_lettered")
                await self._flush_counters()
            else:
                await self._settle(delivery, accept=True)
                metrics.observe_committed(
                    [event.type], _lag_gauge([event])["consumer_lag_ms"] / 1000
                )
                self._log_unknown([event])

    def _forget_counters(self, written: dict[str, float]) -> None:
        for name, value in written.items():
            left = self._pending_counters.get(name, 0) - value
            if left:
                self._pending_counters[name] = left
            else:
                self._pending_counters.pop(name, None)

    def _count(self, *names: str) -> None:
        for name in names:
            self._pending_counters[name] = self._pending_counters.get(name, 0) + 1

    async def _flush_counters(self) -> None:
        counters = dict(self._pending_counters)
        try:
            async with transaction(self._sessions) as session:
                await write_system_metrics(await session.connection(), counters, {})
        except Exception as exc:
            if not is_database_unavailable(exc):
                raise
            return
        self._forget_counters(counters)

    async def _ack_all(self, deliveries: Sequence[Delivery]) -> None:
        """One `multiple` ack when the batch is a contiguous run of one channel's tags."""
        channel = deliveries[0].channel
        tags = [d.tag for d in deliveries]
        same_channel = all(d.channel is channel for d in deliveries)
        if same_channel and tags == sorted(tags) and self._no_older_unsettled(channel, tags[0]):
            await self._send(channel.basic_ack(tags[-1], multiple=True))
            return
        for delivery in deliveries:
            await self._settle(delivery, accept=True)

    def _no_older_unsettled(self, channel: aiormq.abc.AbstractChannel, first_tag: int) -> bool:
        # Deliveries still waiting for a later batch must not be acked by `multiple`.
        return not any(d.channel is channel and d.tag < first_tag for d in self._pending)

    async def _settle(self, delivery: Delivery, *, accept: bool) -> None:
        if accept:
            await self._send(delivery.channel.basic_ack(delivery.tag))
        else:
            await self._send(delivery.channel.basic_reject(delivery.tag, requeue=False))

    async def _send(self, call: Any) -> None:
        try:
            await call
        except (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError) as exc:
            # The channel died after the commit: RabbitMQ redelivers, deduplication absorbs it.
            log.info("settle skipped, channel closed", extra={"error": type(exc).__name__})

    def _log_unknown(self, events: Sequence[Incoming]) -> None:
        for event in events:
            if isinstance(event, UnknownEvent) and event.type not in self._unknown_types_logged:
                self._unknown_types_logged.add(event.type)
                log.warning(
                    "unknown event type counted and skipped", extra={"type": event.type[:96]}
                )

    # --- monitoring -----------------------------------------------------------------------

    async def monitor_forever(self) -> None:
        """Record queue depths (consumer backlog, dead letters) as gauges."""
        while True:
            await asyncio.sleep(self._config.monitor_interval_s)
            try:
                await self.record_queue_depths()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info("queue depth not recorded", extra={"error": type(exc).__name__})

    async def record_queue_depths(self) -> None:
        if not self.queue.connected:
            return
        backlog, dead = await self.queue.message_counts(
            self._config.queue, self._config.dead_letter_queue
        )
        gauges = {"queue_depth": float(backlog), "dead_letter_queue_depth": float(dead)}
        metrics.observe_queue_depths(gauges["queue_depth"], gauges["dead_letter_queue_depth"])
        async with transaction(self._sessions) as session:
            await write_system_metrics(await session.connection(), {}, gauges)


def _lag_gauge(events: Sequence[Incoming]) -> dict[str, float]:
    """How old the freshest event of the batch is: how far behind the stream ingestion runs."""
    newest = max(
        (e.occurred_at if e.occurred_at.tzinfo else e.occurred_at.replace(tzinfo=UTC))
        for e in events
    )
    return {"consumer_lag_ms": max(0.0, (datetime.now(UTC) - newest).total_seconds() * 1000)}

"""Transactional outbox: events are written with the change that makes them true, then relayed.

`Outbox.unit_of_work()` commits the session and publishes its staged events right away (the fast
path, so a chat message reaches a worker without waiting for a poll). Anything the fast path could
not publish — broker down, process killed after commit — stays in the table and the relay loop
publishes it later. Several instances relay side by side: a relay leases a batch (moves its
`created_at` forward, under `FOR UPDATE SKIP LOCKED`) and publishes it outside any transaction.
While a process still publishes a row on its fast path it renews that row's lease, so a
confirm slower than the grace period (a busy broker) does not have other instances' relays publish
the event a second time. Consumers are idempotent on `event_id`, so the rare double publish (a
process stalled longer than the grace period) is harmless.

Longer than ~400 lines on purpose: the fast path and the relay are one object because they share
state no other module should touch: the ids in flight (the relay skips what the fast path is
publishing, and their leases are renewed) and the batched forget/release of rows both paths settle.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Identity,
    LargeBinary,
    MetaData,
    String,
    Table,
    all_,
    bindparam,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shared import tracing
from shared.broker import EventPublisher
from shared.db import driver_connection, transaction
from shared.events import Event

log = logging.getLogger(__name__)

_STAGED_KEY = "convoai.outbox.staged"
FORGET_BATCH_DELAY_S = 0.25
"""Published rows are deleted together this long after the first: one DELETE per window, not
per event. Other relays leave them alone meanwhile (they only take rows past the grace period)."""
RELEASE_BATCH_DELAY_S = 0.1
RELAY_ATTEMPT_TIMEOUT_S = 30.0
"""Two confirm timeouts and two connects per event fit in it: the publisher's own bounds fire
first, so a stuck channel is replaced rather than the whole attempt abandoned."""
RELAY_RETRY_DELAY_S = 0.2
LEASE_RENEWALS_PER_GRACE = 3
"""How often per grace period the rows of events still in flight on the fast path are leased
again: measured under load, broker confirms took up to 9 s, and every row its own relay was not
quick enough to lease again was published a second time by another instance's relay (1.5
`reply.*` events per turn instead of 1)."""
"""After a failed attempt the relay tries again this soon, on a fresh channel: a dead node must
not leave events waiting for the next poll."""


def outbox_table(metadata: MetaData) -> Table:
    """The `outbox` table in the schema of `metadata`; each owning service has its own."""
    return Table(
        "outbox",
        metadata,
        Column("id", BigInteger, Identity(), primary_key=True),
        Column("event_id", String(36), nullable=False, unique=True),
        Column("routing_key", String(64), nullable=False),
        Column("correlation_id", String(64), nullable=True),
        Column("payload", LargeBinary, nullable=False),
        # The W3C `traceparent` of the span that wrote the row, so its publisher (fast path or
        # relay) continues that trace; NULL while tracing is off.
        Column("trace_context", String(128), nullable=True),
        # When the row was written, or last leased by a relay: it is due for the relay a grace
        # period after this.
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    )


@dataclass(frozen=True)
class StagedEvent:
    """An event serialised for the outbox table and for the broker."""

    event_id: str
    routing_key: str
    correlation_id: str | None
    payload: bytes
    trace_context: str | None = None

    @classmethod
    def of(cls, event: Event) -> StagedEvent:
        return cls(
            str(event.event_id),
            event.type,
            event.correlation_id,
            event.model_dump_json().encode(),
            tracing.current_traceparent(),
        )

    def parameters(self) -> tuple[str, str, str | None, bytes, str | None]:
        """The values `outbox_rows_for` takes, in its parameter order."""
        return (
            self.event_id,
            self.routing_key,
            self.correlation_id,
            self.payload,
            self.trace_context,
        )


def outbox_rows_for(outbox: str, source: str, first_parameter: int) -> str:
    """A CTE (`staged AS (...)`) writing one row to the `outbox` table per row of the CTE
    `source`, with the event from parameters $first_parameter.. (`StagedEvent.parameters()`):
    a hot-path statement stages its event in the same statement as its change."""
    n = first_parameter
    # Names come from code, never from input; the values are $n parameters.
    columns = "event_id, routing_key, correlation_id, payload, trace_context"
    values = f"${n}, ${n + 1}, ${n + 2}, ${n + 3}, ${n + 4}"
    return f"staged AS (INSERT INTO {outbox} ({columns}) SELECT {values} FROM {source})"  # noqa: S608


class Outbox:
    def __init__(
        self,
        table: Table,
        session_factory: async_sessionmaker[AsyncSession],
        publisher: EventPublisher,
        *,
        relay_grace: timedelta = timedelta(seconds=3),
        poll_interval_s: float = 1.0,
        batch_size: int = 200,
    ) -> None:
        self._table = table
        self._sessions = session_factory
        engine = session_factory.kw.get("bind")
        assert isinstance(engine, AsyncEngine), "the session factory must be bound to an engine"
        self._engine = engine
        # Forgetting published rows is the outbox's only per-event statement: one array
        # parameter on the driver connection, in autocommit. Through an ORM session the same
        # DELETE cost ~10 % of a gateway's CPU per chat turn (yappi, CPU clock).
        qualified = engine.dialect.identifier_preparer.format_table(table)
        self._forget_statement = f"DELETE FROM {qualified} WHERE event_id = ANY($1::varchar[])"  # noqa: S608
        self._publisher = publisher
        self._relay_grace = relay_grace
        self._poll_interval_s = poll_interval_s
        self._batch_size = batch_size
        self._background: set[asyncio.Task[None]] = set()
        self._published: list[str] = []
        # Committed here and not yet forgotten, with when each row's lease was last taken
        # (monotonic): this relay leaves them to the fast path, and `_keep_leases` keeps the
        # other instances' relays off them, so a slow confirm does not publish an event twice.
        self._in_flight: dict[str, float] = {}
        self._leasing: asyncio.Task[None] | None = None
        self._forgetting: asyncio.Task[None] | None = None
        self._unpublished: list[str] = []
        self._releasing: asyncio.Task[None] | None = None

    async def stage(self, session: AsyncSession, *events: Event) -> None:
        """Write `events` in `session`'s transaction; they are published only if it commits."""
        staged = [StagedEvent.of(e) for e in events]
        await session.execute(
            self._table.insert(),
            [
                {
                    "event_id": s.event_id,
                    "routing_key": s.routing_key,
                    "correlation_id": s.correlation_id,
                    "payload": s.payload,
                    "trace_context": s.trace_context,
                }
                for s in staged
            ],
        )
        session.info.setdefault(_STAGED_KEY, []).extend(staged)

    def publish_after_commit(self, session: AsyncSession, *staged: StagedEvent) -> None:
        """Have `session`'s unit of work publish events whose rows a statement already wrote."""
        session.info.setdefault(_STAGED_KEY, []).extend(staged)

    @asynccontextmanager
    async def unit_of_work(self, *, wait_for_publish: bool = True) -> AsyncIterator[AsyncSession]:
        """A transaction whose staged events are published as soon as it has committed.

        `wait_for_publish=False` publishes in the background instead (a hot path that must not
        wait for the broker's confirm; the row in the table still guarantees delivery).
        """
        async with transaction(self._sessions) as session:
            yield session
        staged: list[StagedEvent] = session.info.pop(_STAGED_KEY, [])
        await self.publish_committed(staged, wait=wait_for_publish)

    async def publish_committed(self, staged: list[StagedEvent], *, wait: bool = True) -> None:
        """The fast path for events whose rows a committed statement wrote to the table."""
        if not staged:
            return
        now = time.monotonic()
        self._in_flight.update((s.event_id, now) for s in staged)
        if self._relay_grace and (self._leasing is None or self._leasing.done()):
            # Not among `_background`: nothing waits for it, it ends when nothing is in flight.
            self._leasing = asyncio.create_task(self._keep_leases())
        if wait:
            await self._publish_after_commit(staged)
        else:
            task = asyncio.create_task(self._publish_after_commit(staged))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _publish_after_commit(self, staged: list[StagedEvent]) -> None:
        published: list[str] = []
        try:
            for s in staged:
                await self._publish(
                    s.routing_key, s.payload, s.event_id, s.correlation_id, s.trace_context
                )
                published.append(s.event_id)
        except Exception as exc:
            log.warning(
                "outbox fast path failed; the relay will publish later",
                extra={"error": repr(exc)[:300], "pending": len(staged) - len(published)},
            )
            unpublished = [s.event_id for s in staged[len(published) :]]
            for event_id in unpublished:
                self._in_flight.pop(event_id, None)
            # The publisher already tried a fresh channel: hand the rows to the relay now, not
            # a grace period after they were written (a dead node must not add to their age).
            self._unpublished.extend(unpublished)
            if self._releasing is None or self._releasing.done():
                self._releasing = asyncio.create_task(self._release_unpublished())
                self._background.add(self._releasing)
                self._releasing.add_done_callback(self._background.discard)
        if published:
            # Forgetting the rows is not on the caller's path; a leftover row is only republished.
            # Rows published close together are deleted by one statement: under load that saves
            # a transaction per commit.
            self._published.extend(published)
            if self._forgetting is None or self._forgetting.done():
                self._forgetting = asyncio.create_task(self._forget_published())
                self._background.add(self._forgetting)
                self._forgetting.add_done_callback(self._background.discard)

    async def _release_unpublished(self) -> None:
        # Batched like `_forget_published`: when a node dies, many commits fail at once.
        while self._unpublished:
            await asyncio.sleep(RELEASE_BATCH_DELAY_S)
            event_ids, self._unpublished = self._unpublished, []
            t = self._table
            try:
                async with transaction(self._sessions) as session:
                    await session.execute(
                        update(t)
                        .where(t.c.event_id.in_(event_ids))
                        .values(created_at=t.c.created_at - self._relay_grace)
                    )
            except Exception as exc:
                log.warning("outbox release failed", extra={"error": repr(exc)[:300]})

    async def _forget_published(self) -> None:
        while self._published:
            await asyncio.sleep(FORGET_BATCH_DELAY_S)
            event_ids, self._published = self._published, []
            await self._forget(event_ids)

    async def _forget(self, event_ids: list[str]) -> None:
        try:
            async with driver_connection(self._engine) as connection:
                await connection.execute(self._forget_statement, event_ids)
        except Exception as exc:
            log.warning("outbox cleanup failed", extra={"error": repr(exc)})
        finally:
            for event_id in event_ids:
                self._in_flight.pop(event_id, None)

    async def _keep_leases(self) -> None:
        """Lease again the rows of events in flight here for a while, until none is left.

        Costs nothing while confirms come back within a fraction of the grace period; one
        UPDATE per interval while they do not.
        """
        interval_s = self._relay_grace.total_seconds() / LEASE_RENEWALS_PER_GRACE
        t = self._table
        while self._in_flight:
            await asyncio.sleep(interval_s)
            due = time.monotonic() - interval_s
            stale = [event_id for event_id, leased in self._in_flight.items() if leased <= due]
            if not stale:
                continue
            leased_at = time.monotonic()
            try:
                async with transaction(self._sessions) as session:
                    await session.execute(
                        update(t).where(t.c.event_id.in_(stale)).values(created_at=func.now())
                    )
            except Exception as exc:
                log.warning("outbox lease renewal failed", extra={"error": repr(exc)[:300]})
                continue
            for event_id in stale:
                if event_id in self._in_flight:
                    self._in_flight[event_id] = leased_at

    async def relay_once(self) -> int:
        """Publish one batch of rows older than the grace period; return how many were sent.

        Rows are leased, not locked while publishing: the claim moves their `created_at` to
        now and commits, so other relays leave them alone for a grace period. A relay that
        stalls on a half-recovered broker connection (or dies) then holds nothing: its rows
        come due again and another relay publishes them.
        """
        cutoff = datetime.now(UTC) - self._relay_grace
        t = self._table
        due = select(t.c.id).where(t.c.created_at < cutoff)
        if self._in_flight:
            # One array parameter, however many events are in flight.
            in_flight = bindparam("in_flight", list(self._in_flight), type_=ARRAY(String))
            due = due.where(t.c.event_id != all_(in_flight))
        due = due.order_by(t.c.id).limit(self._batch_size).with_for_update(skip_locked=True)
        async with transaction(self._sessions) as session:
            rows = (
                await session.execute(
                    update(t)
                    .where(t.c.id.in_(due.scalar_subquery()))
                    .values(created_at=func.now())
                    .returning(
                        t.c.id,
                        t.c.event_id,
                        t.c.routing_key,
                        t.c.correlation_id,
                        t.c.payload,
                        t.c.trace_context,
                    )
                )
            ).all()
        if not rows:
            return 0
        published: list[int] = []
        try:
            for row in sorted(rows, key=lambda r: r.id):
                await self._publish(
                    row.routing_key,
                    row.payload,
                    row.event_id,
                    row.correlation_id,
                    row.trace_context,
                )
                published.append(row.id)
        except BaseException:
            # The publisher already tried a fresh channel. Give the rest of the batch back at
            # once (not after the lease) so the next attempt, on yet another channel or node,
            # does not wait on this one; forget what did go out.
            unpublished = [r.id for r in rows if r.id not in set(published)]
            await asyncio.shield(self._settle_batch(published, unpublished))
            raise
        await self._settle_batch(published, [])
        return len(rows)

    async def _publish(
        self,
        routing_key: str,
        payload: bytes,
        event_id: str,
        correlation_id: str | None,
        trace_context: str | None,
    ) -> None:
        with tracing.producer_span(f"{routing_key} publish", trace_context) as headers:
            await self._publisher.publish_raw(
                routing_key, payload, event_id, correlation_id, headers
            )

    async def _settle_batch(self, published: list[int], unpublished: list[int]) -> None:
        t = self._table
        async with transaction(self._sessions) as session:
            if published:
                await session.execute(delete(t).where(t.c.id.in_(published)))
            if unpublished:
                await session.execute(
                    update(t)
                    .where(t.c.id.in_(unpublished))
                    .values(created_at=t.c.created_at - self._relay_grace)
                )

    async def oldest_age_s(self) -> float | None:
        """Seconds since the oldest event still in the table happened (None when it is empty).

        From the event's own `occurred_at`: `created_at` moves with every lease.
        """
        t = self._table
        async with self._sessions() as session:
            payload = (
                await session.execute(select(t.c.payload).order_by(t.c.id).limit(1))
            ).scalar_one_or_none()
        if payload is None:
            return None
        occurred_at = datetime.fromisoformat(json.loads(payload)["occurred_at"])
        if occurred_at.tzinfo is None:
            occurred_at = occurred_at.replace(tzinfo=UTC)
        return max(0.0, (datetime.now(UTC) - occurred_at).total_seconds())

    async def relay_forever(self) -> None:
        """Background loop: drain leftovers, back off while the broker or database is down."""
        while True:
            failed = False
            try:
                # Bounded: a publish stuck on a half-recovered connection must not stall the
                # relay forever; the batch's rows stay and are claimed again.
                sent = await asyncio.wait_for(self.relay_once(), RELAY_ATTEMPT_TIMEOUT_S)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is None or current.cancelling():
                    raise
                # A dropped AMQP connection cancels its pending futures: not our cancellation.
                log.warning("outbox relay interrupted by the broker, retrying")
                sent, failed = 0, True
            except Exception as exc:
                log.warning(
                    "outbox relay failed, retrying",
                    extra={"error": repr(exc)[:300], "oldest_age_s": await self._age_or_none()},
                )
                sent, failed = 0, True
            if sent:
                log.info(
                    "outbox relayed",
                    extra={"count": sent, "oldest_age_s": await self._age_or_none()},
                )
                continue
            await asyncio.sleep(RELAY_RETRY_DELAY_S if failed else self._poll_interval_s)

    async def _age_or_none(self) -> float | None:
        try:
            age = await self.oldest_age_s()
        except Exception:
            return None  # the database is what failed; the warning already says so
        return None if age is None else round(age, 3)

    async def backlog(self) -> tuple[int, float]:
        """Rows waiting to be published and the age in seconds of the oldest (0 when none)."""
        t = self._table
        async with self._sessions() as session:
            row = (
                await session.execute(
                    select(
                        func.count(),
                        func.coalesce(
                            func.extract("epoch", func.now() - func.min(t.c.created_at)), 0
                        ),
                    )
                )
            ).one()
        return int(row[0]), float(row[1])

    async def drain_background(self) -> None:
        """Wait for pending cleanups (graceful shutdown)."""
        for task in list(self._background):
            with suppress(Exception):
                await task
        if self._leasing is not None:
            self._leasing.cancel()
            with suppress(asyncio.CancelledError):
                await self._leasing

"""Turning a batch of events into metric rows, exactly once per event id.

`EventIngestor.ingest` runs inside the caller's transaction: it records every event id in
`processed_events` (unique) and applies only the events whose id was new, all as additive
upserts. Commit, and each event has counted once; roll back, and none has.

The parts: `projection.py` (event → deltas, pure), `accumulators.py` (the deltas),
`bulk_upsert.py` (SQL generation), `upserts.py` (one upsert per table, in key order).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from services.analytics_consumer.projection import BatchEffects
from services.analytics_consumer.upserts import claim_new_events, write_effects, write_replies
from services.budgets.pricing import PriceTable
from shared.events import Event


@dataclass(frozen=True)
class UnknownEvent:
    """A well-formed envelope whose type this consumer does not know (a newer producer)."""

    event_id: uuid.UUID
    type: str
    occurred_at: datetime


Incoming = Event | UnknownEvent


@dataclass(frozen=True)
class IngestResult:
    applied: int
    duplicates: int
    unknown_types: dict[str, int]


class EventIngestor:
    """Applies batches of events to the analytics tables (no framework types, no commit)."""

    def __init__(self, prices: PriceTable) -> None:
        self._prices = prices

    async def ingest(
        self,
        session: AsyncSession,
        events: Sequence[Incoming],
        extra_counters: Mapping[str, float] | None = None,
        gauges: Mapping[str, float] | None = None,
    ) -> IngestResult:
        conn = await session.connection()
        unique: dict[uuid.UUID, Incoming] = {}
        for event in events:
            unique.setdefault(event.event_id, event)
        new_ids = await claim_new_events(
            conn, list(unique), [event.type for event in unique.values()]
        )
        effects = BatchEffects(self._prices)
        unknown: dict[str, int] = defaultdict(int)
        for event_id, event in unique.items():
            if event_id not in new_ids:
                continue
            if isinstance(event, UnknownEvent):
                unknown[event.type] += 1
            else:
                effects.add(event)
        await write_replies(conn, effects)
        for event_type, count in unknown.items():
            effects.counters["unknown_events"] += count
            effects.counters[f"unknown_events.{event_type[:96]}"] += count
        duplicates = len(events) - len(new_ids)
        effects.counters["events_ingested"] += len(new_ids)
        effects.counters["duplicates_skipped"] += duplicates
        for name, value in (extra_counters or {}).items():
            effects.counters[name] += value
        await write_effects(conn, effects, gauges or {})
        return IngestResult(applied=len(new_ids), duplicates=duplicates, unknown_types=unknown)

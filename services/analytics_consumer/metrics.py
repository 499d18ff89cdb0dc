"""The analytics consumer's Prometheus metrics: what it ingested, how far behind it runs, and
what it dead-lettered. Event types are label values only when they are in our catalogue: a
publisher could otherwise invent unbounded ones."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import Counter, Gauge, Histogram

from shared.events import EVENT_TYPES

EVENTS_INGESTED = Counter(
    "convoai_analytics_events_ingested",
    "Events committed to the analytics schema, by type (`unknown` outside the catalogue)",
    ["type"],
)
BATCH_SIZE = Histogram(
    "convoai_analytics_batch_size",
    "Events per committed batch",
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500),
)
LAG = Gauge(
    "convoai_analytics_lag_seconds",
    "Age of the newest event in the last committed batch: how far behind ingestion runs",
)
DEAD_LETTERED = Counter(
    "convoai_analytics_dead_lettered",
    "Deliveries rejected to the dead-letter queue, by reason",
    ["reason"],
)
QUEUE_DEPTH = Gauge(
    "convoai_analytics_queue_depth",
    "Messages waiting in a queue, as last sampled by the queue monitor",
    ["queue"],
)


def observe_committed(event_types: Sequence[str], lag_s: float) -> None:
    """A batch (or a single event) committed and acknowledged."""
    for event_type in event_types:
        EVENTS_INGESTED.labels(event_type if event_type in EVENT_TYPES else "unknown").inc()
    BATCH_SIZE.observe(len(event_types))
    LAG.set(lag_s)


def observe_queue_depths(backlog: float, dead_letters: float) -> None:
    QUEUE_DEPTH.labels("analytics.events").set(backlog)
    QUEUE_DEPTH.labels("analytics.events.dead").set(dead_letters)

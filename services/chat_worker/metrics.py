"""The chat worker's Prometheus metrics.

Counts the worker already keeps (`WorkerMetrics`, the frame channel's counters) are read at
scrape time by a collector, so the reply path pays nothing for them; only the latency
histograms and model error codes are observed as a reply ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shared.events import ReplyCancelled, ReplyCompleted, ReplyFailed
from shared.metrics import Refresh
from shared.queue_consumer import QueueConsumer

if TYPE_CHECKING:  # the service imports this module to observe its replies
    from services.chat_worker.broadcast import FrameChannel
    from services.chat_worker.service import ChatReplies

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

TTFT = Histogram(
    "convoai_chat_time_to_first_token_seconds",
    "From a request's claim to the model's first token",
    buckets=_LATENCY_BUCKETS,
)
TURN_DURATION = Histogram(
    "convoai_chat_turn_duration_seconds",
    "From a request's claim to its stored final reply, by outcome",
    ["outcome"],
    buckets=_LATENCY_BUCKETS,
)
MODEL_ERRORS = Counter(
    "convoai_chat_model_errors",
    "Replies that failed, by error code (a closed set: see chat_worker.llm.classify)",
    ["code"],
)

QUEUE_DEPTH = Gauge(
    "convoai_chat_requests_queue_depth",
    "Requests waiting in chat.requests (every worker reports the same queue)",
)

TURN_OUTCOMES = ("completed", "failed", "cancelled", "superseded", "requeued")
"""`WorkerMetrics` fields that are a turn's outcome (the label values of `turns_total`)."""


def observe_reply_outcome(event: ReplyCompleted | ReplyFailed | ReplyCancelled) -> None:
    """A stored final reply: its latencies and, for a failure, its code."""
    if isinstance(event, ReplyCompleted):
        if event.ttft_ms is not None:
            TTFT.observe(event.ttft_ms / 1000)
        outcome = "completed"
    elif isinstance(event, ReplyFailed):
        MODEL_ERRORS.labels(event.error_code).inc()
        outcome = "failed"
    else:
        outcome = "cancelled"
    if event.duration_ms is not None:
        TURN_DURATION.labels(outcome).observe(event.duration_ms / 1000)


class WorkerCollector(Collector):
    """Reads the worker's own counters when Prometheus scrapes."""

    def __init__(self, replies: ChatReplies, frames: FrameChannel) -> None:
        self._replies = replies
        self._frames = frames

    def collect(self) -> Iterator[Metric]:
        counts = asdict(self._replies.metrics)
        turns = CounterMetricFamily(
            "convoai_chat_turns", "chat.requests handled, by outcome", labels=["outcome"]
        )
        for outcome in TURN_OUTCOMES:
            turns.add_metric([outcome], counts[outcome])
        yield turns
        yield CounterMetricFamily(
            "convoai_chat_duplicates_skipped",
            "Requests whose reply already existed or was being written (redeliveries)",
            value=counts["duplicates_skipped"],
        )
        yield CounterMetricFamily(
            "convoai_chat_regenerated",
            "Replies abandoned by a dead worker and generated again",
            value=counts["regenerated"],
        )
        yield CounterMetricFamily(
            "convoai_chat_model_retries",
            "Model calls retried after a retryable failure",
            value=counts["model_retries"],
        )
        yield GaugeMetricFamily(
            "convoai_chat_requests_in_flight",
            "chat.requests deliveries being handled by this worker",
            value=counts["in_flight"],
        )
        yield GaugeMetricFamily(
            "convoai_chat_streaming_replies",
            "Replies this worker is streaming now",
            value=len(self._replies.active),
        )
        yield CounterMetricFamily(
            "convoai_chat_frames_published",
            "Reply frames published on the stream exchange",
            value=self._frames.frames_published,
        )
        yield CounterMetricFamily(
            "convoai_chat_frames_dropped",
            "Reply frames lost to a broker failure",
            value=self._frames.frames_dropped,
        )
        yield GaugeMetricFamily(
            "convoai_chat_frames_pending",
            "Reply frames queued for publishing",
            value=self._frames.pending_frames,
        )


def queue_depth_refresh(requests: QueueConsumer) -> Refresh:
    async def refresh() -> None:
        (depth,) = await requests.message_counts(requests.queue_name)
        QUEUE_DEPTH.set(depth)

    return refresh


def register_worker_collector(replies: ChatReplies, frames: FrameChannel) -> None:
    # One worker per process; a second app in the same process (tests) replaces the first.
    global _registered
    if _registered is not None:
        REGISTRY.unregister(_registered)
    _registered = WorkerCollector(replies, frames)
    REGISTRY.register(_registered)


_registered: WorkerCollector | None = None

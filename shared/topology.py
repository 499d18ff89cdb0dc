"""The broker topology (ARCHITECTURE.md), declared once; every name starts with the namespace."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from faststream.rabbit import ExchangeType, QueueType, RabbitExchange, RabbitQueue
from faststream.rabbit.schemas.queue import QuorumQueueArgs

CHAT_REQUEST_DELIVERY_LIMIT = 5
"""After this many deliveries a `message.sent` request is dead-lettered instead of retried."""

ANALYTICS_DELIVERY_LIMIT = 5

KNOWLEDGE_FILES_DELIVERY_LIMIT = 5
"""A file whose extraction keeps killing its consumer is dead-lettered after this many tries."""


@dataclass(frozen=True)
class Topology:
    """Exchanges and queues of one namespace; `Topology("t1abc")` never touches `convoai.*`."""

    namespace: str

    def name(self, suffix: str) -> str:
        return f"{self.namespace}.{suffix}"

    @cached_property
    def events(self) -> RabbitExchange:
        """Every domain event, routing key = event type."""
        return RabbitExchange(self.name("events"), type=ExchangeType.TOPIC, durable=True)

    @cached_property
    def stream(self) -> RabbitExchange:
        """Live reply frames, routing key `conv.<conversation_id>`; transient."""
        return RabbitExchange(self.name("stream"), type=ExchangeType.TOPIC, durable=True)

    @cached_property
    def control(self) -> RabbitExchange:
        """Commands to whichever worker holds a reply (cancel, resync), routing key `conv.<id>`."""
        return RabbitExchange(self.name("control"), type=ExchangeType.TOPIC, durable=True)

    @cached_property
    def dead_letters(self) -> RabbitExchange:
        """Poison messages, routed by their original queue name."""
        return RabbitExchange(self.name("dlx"), type=ExchangeType.DIRECT, durable=True)

    def _dead_letter_args(self, queue: str, delivery_limit: int) -> QuorumQueueArgs:
        return {
            "x-delivery-limit": delivery_limit,
            "x-dead-letter-exchange": self.dead_letters.name,
            "x-dead-letter-routing-key": queue,
        }

    @cached_property
    def chat_requests(self) -> RabbitQueue:
        """`message.sent` for the workers: competing consumers, dead-lettered after retries."""
        name = self.name("chat.requests")
        return RabbitQueue(
            name,
            queue_type=QueueType.QUORUM,
            durable=True,
            routing_key="message.sent",
            arguments=self._dead_letter_args(name, CHAT_REQUEST_DELIVERY_LIMIT),
        )

    @cached_property
    def analytics_events(self) -> RabbitQueue:
        """Every event, for the analytics consumer."""
        name = self.name("analytics.events")
        return RabbitQueue(
            name,
            queue_type=QueueType.QUORUM,
            durable=True,
            routing_key="#",
            arguments=self._dead_letter_args(name, ANALYTICS_DELIVERY_LIMIT),
        )

    @cached_property
    def knowledge_files(self) -> RabbitQueue:
        """`file.uploaded` for the knowledge workers: extraction and indexing off the request
        path, one competing consumer per file."""
        name = self.name("knowledge.files")
        return RabbitQueue(
            name,
            queue_type=QueueType.QUORUM,
            durable=True,
            routing_key="file.uploaded",
            arguments=self._dead_letter_args(name, KNOWLEDGE_FILES_DELIVERY_LIMIT),
        )

    @property
    def durable_exchanges(self) -> tuple[RabbitExchange, ...]:
        return (self.events, self.stream, self.control, self.dead_letters)

    @property
    def event_queues(self) -> tuple[RabbitQueue, ...]:
        """Durable queues bound to `events`, each with a dead-letter queue of its own."""
        return (self.chat_requests, self.analytics_events, self.knowledge_files)

    def dead_letter_queue(self, source: RabbitQueue) -> RabbitQueue:
        """`<source>.dead`: where `source`'s poison messages wait, visible, for a human."""
        return RabbitQueue(
            f"{source.name}.dead",
            queue_type=QueueType.QUORUM,
            durable=True,
            routing_key=source.name,
        )

    @property
    def revocations_stream(self) -> str:
        """RabbitMQ stream of access-revoking events (shared/revocations.py declares it)."""
        return self.name("revocations")

    def gateway_stream_queue(self, instance_id: str) -> RabbitQueue:
        """One exclusive, auto-delete queue per gateway instance; bound per watched conversation."""
        return RabbitQueue(
            self.name(f"gateway.{instance_id}.stream"),
            exclusive=True,
            auto_delete=True,
            durable=False,
        )

    def worker_control_queue(self, instance_id: str) -> RabbitQueue:
        """One exclusive queue per worker, bound to `conv.*` for as long as the worker runs (it
        acts on the commands for the replies it holds; chat_worker/broadcast.py says why)."""
        return RabbitQueue(
            self.name(f"worker.{instance_id}.control"),
            exclusive=True,
            auto_delete=True,
            durable=False,
        )


def conversation_routing_key(conversation_id: str) -> str:
    return f"conv.{conversation_id}"

"""The `chat.requests` subscriber: decode, hand to the service, acknowledge as it says."""

from __future__ import annotations

import asyncio
import logging

from faststream import AckPolicy
from faststream.rabbit import RabbitBroker, RabbitMessage
from pydantic import ValidationError

from services.chat_worker.service import ChatReplies, Disposition
from shared.events import MessageSent, UnknownEventType, parse_event
from shared.topology import Topology

log = logging.getLogger(__name__)

REQUEUE_DELAY_S = 1.0
"""Pause before giving a request back, so a failing dependency is not hammered in a loop."""


def register_handlers(broker: RabbitBroker, topology: Topology, replies: ChatReplies) -> None:
    @broker.subscriber(topology.chat_requests, topology.events, ack_policy=AckPolicy.MANUAL)
    async def on_message_sent(message: RabbitMessage) -> None:
        try:
            event = parse_event(message.body)
        except (ValidationError, UnknownEventType, ValueError) as exc:
            log.warning("malformed chat request dead-lettered", extra={"error": str(exc)[:200]})
            await _settle(message.reject(requeue=False))
            return
        if not isinstance(event, MessageSent):
            await _settle(message.reject(requeue=False))
            return
        try:
            disposition = await replies.handle_request(
                event, redelivered=bool(message.raw_message.redelivered)
            )
        except Exception:
            # Never let one request take the consumer down; the broker retries it (bounded by
            # the queue's delivery limit, then the dead-letter queue).
            log.exception("chat request failed", extra={"message_id": event.message_id})
            disposition = Disposition.REQUEUE
        if disposition is Disposition.ACK:
            await _settle(message.ack())
        else:
            await asyncio.sleep(REQUEUE_DELAY_S)
            await _settle(message.nack(requeue=True))


async def _settle(operation: object) -> None:
    """Ack/nack/reject; when the channel is gone the broker redelivers, which is safe."""
    try:
        await operation  # type: ignore[misc]
    except Exception as exc:
        log.warning("could not settle a chat request", extra={"error": repr(exc)})

"""The `chat.requests` consumer: decode, hand to the service, acknowledge as it says.

Read with `shared.queue_consumer` (aiormq, one delivery at a time, reconnecting by itself), not
a FastStream subscriber: FastStream's per-message machinery (decoder, logging middleware,
dependency injection) measured ~0.6 ms of extra latency per request and ~5 % of a busy worker's
CPU, on the path every reply starts on. The FastStream broker still declares the topology and
publishes the worker's events.

A request is acknowledged once its reply is stored (or found stored); a worker that dies
mid-reply leaves it unacknowledged, so the broker redelivers it and the next worker takes the
reply over (`redelivered` tells the claim to look for one). A request the service could not
handle (database down past its retries) goes back to the queue, bounded by the queue's delivery
limit, then the dead-letter queue; a delivery that is not a `message.sent` is dead-lettered.
"""

from __future__ import annotations

from services.chat_worker.service import ChatReplies
from shared.events import MessageSent
from shared.queue_consumer import MessageHandler, settle_each_event

REQUEUE_DELAY_S = 1.0
"""Pause before giving a request back, so a failing dependency is not hammered in a loop."""


def request_handler(replies: ChatReplies) -> MessageHandler:
    return settle_each_event(
        MessageSent,
        replies.handle_request,
        what="chat request",
        requeue_delay_s=REQUEUE_DELAY_S,
        log_fields=lambda event: {"message_id": event.message_id},
        span_name="chat.requests process",
    )

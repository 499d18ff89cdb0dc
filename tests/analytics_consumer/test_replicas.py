"""Two consumer replicas share the queue: hot rollup rows, no deadlock, exact totals."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from shared.events import Event, MessageSent, ReplyCompleted
from tests.analytics_consumer.conftest import eventually

pytestmark = pytest.mark.e2e

TURNS = 1200


async def test_two_replicas_count_every_event_once(stack):
    # A small prefetch each, so that RabbitMQ spreads the events over both replicas.
    settings = {
        "CONVOAI_BATCH_MAX_EVENTS": "100",
        "CONVOAI_BATCH_WINDOW_MS": "20",
        "CONVOAI_CONSUMER_PREFETCH": "150",
    }
    first = stack.start_consumer(**settings)
    second = stack.start_consumer(**settings)
    events: list[Event] = []
    for i in range(TURNS):
        # Two users and one day: every batch of both replicas updates the same rollup rows.
        user = f"u-replica-{i % 2}"
        events.append(
            MessageSent(
                producer="gateway", user_id=user, conversation_id="conv-hot", message_id=f"m{i}"
            )
        )
        events.append(
            ReplyCompleted(
                producer="chat_worker",
                user_id=user,
                conversation_id="conv-hot",
                message_id=f"r{i}",
                reply_to=f"m{i}",
                model="gpt-4o",
                prompt_tokens=7,
                completion_tokens=3,
                ttft_ms=100.0,
                duration_ms=400.0,
            )
        )
    await stack.publish_all(events)
    await eventually(lambda: stack.ingested(len(events)), timeout_s=60)

    async with stack.engine.connect() as conn:
        daily = (
            await conn.execute(
                text(
                    "SELECT sum(user_messages), sum(replies_completed), sum(prompt_tokens), "
                    "sum(active_users) FROM analytics.daily_stats"
                )
            )
        ).one()
        conversation = (
            await conn.execute(
                text(
                    "SELECT user_messages, replies_completed, completion_tokens "
                    "FROM analytics.conversations WHERE conversation_id = 'conv-hot'"
                )
            )
        ).one()
    assert tuple(daily) == (TURNS, TURNS, 7 * TURNS, 2)
    assert tuple(conversation) == (TURNS, TURNS, 3 * TURNS)
    for process in (first, second):
        assert "deadlock" not in process.logs().lower()
        assert process.proc is not None and process.proc.poll() is None

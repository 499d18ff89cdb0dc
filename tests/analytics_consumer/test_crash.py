"""A consumer killed with SIGKILL mid-batch loses nothing and counts nothing twice."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from shared.events import Event, MessageSent, ReplyCompleted
from tests.analytics_consumer.conftest import eventually

pytestmark = pytest.mark.e2e

TURNS = 1500


def _turns() -> list[Event]:
    events: list[Event] = []
    for i in range(TURNS):
        user = f"u-crash-{i % 3}"
        conversation = f"conv-crash-{i % 7}"
        events.append(
            MessageSent(
                producer="gateway", user_id=user, conversation_id=conversation, message_id=f"m{i}"
            )
        )
        events.append(
            ReplyCompleted(
                producer="chat_worker",
                user_id=user,
                conversation_id=conversation,
                message_id=f"r{i}",
                reply_to=f"m{i}",
                model="gpt-4o-mini",
                prompt_tokens=10 + i % 5,
                completion_tokens=20 + i % 11,
                ttft_ms=50.0,
                duration_ms=200.0,
            )
        )
    return events


async def _totals(stack) -> tuple:
    async with stack.engine.connect() as conn:
        daily = (
            await conn.execute(
                text(
                    "SELECT sum(user_messages), sum(replies_completed), sum(prompt_tokens), "
                    "sum(completion_tokens) FROM analytics.daily_stats"
                )
            )
        ).one()
        users = (
            await conn.execute(
                text(
                    "SELECT sum(user_messages), sum(replies), sum(completion_tokens) "
                    "FROM analytics.users"
                )
            )
        ).one()
        conversations = (
            await conn.execute(
                text(
                    "SELECT sum(user_messages), sum(replies_completed) FROM analytics.conversations"
                )
            )
        ).one()
    return tuple(daily), tuple(users), tuple(conversations)


async def test_kill_mid_batch_then_restart_counts_every_event_once(stack):
    events = _turns()
    await stack.publish_all(events)
    # Large batches so that the kill lands while one is being written or acknowledged.
    settings = {"CONVOAI_BATCH_MAX_EVENTS": "1000", "CONVOAI_BATCH_WINDOW_MS": "200"}
    first = stack.start_consumer(**settings)
    await eventually(lambda: stack.metric("events_ingested"), message="nothing ingested")
    first.kill()
    ingested_at_kill = await stack.metric("events_ingested")
    assert 0 < ingested_at_kill < len(events), "the kill should land mid-stream"

    stack.start_consumer(**settings)
    await eventually(lambda: stack.ingested(len(events)), timeout_s=60)
    await eventually(lambda: _queue_empty(stack))

    prompt = sum(10 + i % 5 for i in range(TURNS))
    completion = sum(20 + i % 11 for i in range(TURNS))
    daily, users, conversations = await _totals(stack)
    assert daily == (TURNS, TURNS, prompt, completion)
    assert users == (TURNS, TURNS, completion)
    assert conversations == (TURNS, TURNS)
    assert await stack.scalar("SELECT count(*) FROM analytics.replies") == TURNS
    histogram = await stack.scalar(
        "SELECT array_agg(total ORDER BY model) FROM (SELECT model, sum(replies) AS total "
        "FROM analytics.ttft_histogram GROUP BY model) per_model"
    )
    assert histogram == [TURNS, TURNS]  # "*" (every model) and gpt-4o-mini


async def _queue_empty(stack) -> bool:
    return await stack.queue_depth() == 0

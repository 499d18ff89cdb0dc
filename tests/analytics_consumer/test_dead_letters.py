"""Malformed and poison events end in `<ns>.analytics.events.dead`; their neighbours still count."""

from __future__ import annotations

import json
import uuid

import pytest

from shared.events import MessageSent, ReplyCompleted
from tests.analytics_consumer.conftest import eventually

pytestmark = pytest.mark.e2e


def _messages(count: int, conversation: str = "conv-dlq") -> list[MessageSent]:
    return [
        MessageSent(
            producer="gateway",
            user_id="u-dlq",
            conversation_id=conversation,
            message_id=f"m{uuid.uuid4().hex[:8]}",
        )
        for _ in range(count)
    ]


async def _user_messages(stack) -> int:
    value = await stack.scalar("SELECT coalesce(sum(user_messages), 0) FROM analytics.daily_stats")
    return int(value)


async def test_bad_events_are_dead_lettered_and_the_rest_keep_flowing(stack):
    # A wide batch window puts the bad events in the same transactions as good ones.
    process = stack.start_consumer(CONVOAI_BATCH_WINDOW_MS="300", CONVOAI_BATCH_MAX_EVENTS="100")
    good = _messages(40)
    not_json = b'{"type": "message.sent", "event_id": '
    missing_fields = json.dumps(
        {"type": "message.sent", "event_id": str(uuid.uuid4()), "producer": "gateway"}
    ).encode()
    # Valid to pydantic, refused by Postgres (longer than the id column): a poison event.
    too_long_id = MessageSent(
        producer="gateway", user_id="u-dlq", conversation_id="c" * 500, message_id="m-long"
    )
    # Refused by the driver before it reaches the server (out of bigint range).
    overflow = ReplyCompleted(
        producer="chat_worker",
        user_id="u-dlq",
        conversation_id="conv-dlq",
        message_id="r-overflow",
        reply_to="m-x",
        model="mock-gpt",
        prompt_tokens=10**19,
    )
    bad = [
        ("message.sent", not_json),
        ("message.sent", missing_fields),
        ("message.sent", too_long_id.model_dump_json().encode()),
        ("reply.completed", overflow.model_dump_json().encode()),
    ]
    for index, event in enumerate(good):
        await stack.publish(event)
        if index % 10 == 5:
            routing_key, body = bad[index // 10]
            await stack.publish_raw(routing_key, body)

    await eventually(lambda: stack.metric("dead_lettered"), message="nothing was dead-lettered")
    await eventually(lambda: _equals(stack.metric("dead_lettered"), 4), timeout_s=30)
    await eventually(lambda: _equals(_user_messages(stack), 40))
    await eventually(lambda: _equals(stack.queue_depth(dead=True), 4))
    # The dashboard sees the dead letters waiting for a human, and the backlog.
    await eventually(lambda: _equals(stack.metric("dead_letter_queue_depth"), 4))
    assert await stack.metric("malformed_events") == 2
    assert await stack.metric("poison_events") == 2
    assert sorted(await stack.dead_letters()) == sorted(body for _, body in bad)
    logs = process.logs()
    assert logs.count("batch failed, isolating the bad event") >= 1
    assert logs.count("poison event dead-lettered") == 2

    # The consumer is still consuming.
    await stack.publish_all(_messages(15))
    await eventually(lambda: _equals(_user_messages(stack), 55))
    assert await stack.queue_depth() == 0
    await eventually(lambda: _equals(stack.metric("dead_letter_queue_depth"), 0))
    assert (
        await stack.scalar(
            "SELECT count(*) FROM analytics.system_metrics WHERE name = 'queue_depth'"
        )
        == 1
    )


async def test_unknown_types_are_counted_not_dead_lettered(stack):
    before = await stack.metric("unknown_events")
    body = json.dumps(
        {
            "event_id": str(uuid.uuid4()),
            "type": "reply.rated",
            "version": 3,
            "occurred_at": "2026-01-01T00:00:00Z",
            "producer": "future",
            "stars": 5,
        }
    ).encode()
    await stack.publish_raw("reply.rated", body)
    await stack.publish_raw("reply.rated", body)
    await eventually(lambda: _equals(stack.metric("unknown_events"), before + 1))
    assert await stack.metric("unknown_events.reply.rated") == 1
    await eventually(lambda: _equals(stack.queue_depth(), 0))
    assert await stack.queue_depth(dead=True) == 0


async def _equals(value_coro, expected) -> bool:
    return (await value_coro) == expected

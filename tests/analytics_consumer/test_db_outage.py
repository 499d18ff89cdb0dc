"""A Postgres outage pauses consumption; when the database is back, totals are exact."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from shared.events import MessageSent
from tests.analytics_consumer.conftest import eventually
from tests.faults import TcpProxy

pytestmark = pytest.mark.e2e


def _messages(start: int, count: int) -> list[MessageSent]:
    return [
        MessageSent(
            producer="gateway",
            user_id=f"u-outage-{i % 4}",
            conversation_id=f"conv-outage-{i % 9}",
            message_id=f"m{i}",
        )
        for i in range(start, start + count)
    ]


async def _user_messages(stack) -> int:
    async with stack.engine.connect() as conn:
        value = await conn.scalar(
            text("SELECT coalesce(sum(user_messages), 0) FROM analytics.daily_stats")
        )
    return int(value)


async def _equals(coro, expected) -> bool:
    return (await coro) == expected


async def test_consumption_pauses_during_a_database_outage_and_resumes_exactly(stack):
    proxy = TcpProxy.for_url(stack.infra.database_url).start()
    try:
        process = stack.start_consumer(
            CONVOAI_DATABASE_URL=proxy.proxied_url(stack.infra.database_url),
            CONVOAI_DB_RETRY_MAX_BACKOFF_S="0.5",
        )
        await stack.publish_all(_messages(0, 300))
        await eventually(lambda: _equals(_user_messages(stack), 300))

        proxy.cut()
        await stack.publish_all(_messages(300, 700))
        await eventually(
            lambda: _logged(process, "database unavailable, consumption paused"),
            message="the consumer did not notice the outage",
        )
        # Nothing was acknowledged without being stored: the events wait in the queue.
        assert await _user_messages(stack) == 300
        assert process.proc is not None and process.proc.poll() is None

        proxy.restore()
        await eventually(lambda: _equals(_user_messages(stack), 1000), timeout_s=60)
        await eventually(lambda: _equals(stack.queue_depth(), 0))
        assert await stack.metric("events_ingested") == 1000
        assert await stack.scalar("SELECT sum(user_messages) FROM analytics.users") == 1000
        assert _logged_now(process, "database back, consumption resumed")
    finally:
        proxy.close()


async def _logged(process, text_: str) -> bool:
    return _logged_now(process, text_)


def _logged_now(process, text_: str) -> bool:
    return text_ in process.logs()

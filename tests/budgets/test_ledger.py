"""The ledger's statements on the real database, as production runs them: the gateway's message
statement (admission) and the worker's final-reply statement (settlement), plus the release of
reservations nothing settled. No processes: these are the rules the e2e tests rely on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.budgets import ledger
from services.budgets.admission import Admission, OverLimit, over_limit_from
from services.budgets.pricing import PricingSettings
from services.chat.models import Conversation, MessageStatus
from services.chat_worker import repository as worker_repository
from services.gateway import repository as gateway_repository
from shared.db import create_engine, create_session_factory, driver_connection, transaction
from shared.events import MessageSent, ReplyCompleted
from shared.ids import IdKind, new_id
from shared.outbox import StagedEvent

PRICES = PricingSettings().price_table()
MODEL = "gpt-4o-mini"


@pytest.fixture
async def engine(infra) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(infra.database_url, pool_size=10)
    yield engine
    await engine.dispose()


async def conversation(engine: AsyncEngine, owner: str) -> str:
    conversation_id = new_id(IdKind.CONVERSATION)
    async with transaction(create_session_factory(engine)) as session:
        session.add(Conversation(id=conversation_id, owner_id=owner, title="t", model=MODEL))
    return conversation_id


async def send(engine: AsyncEngine, conversation_id: str, admission: Admission) -> str:
    """The gateway's message statement; returns the stored message id or raises `OverLimit`."""
    message_id = new_id(IdKind.MESSAGE)
    event = StagedEvent.of(
        MessageSent(
            producer="test",
            user_id=admission.user_id,
            conversation_id=conversation_id,
            message_id=message_id,
            content_length=2,
        )
    )
    try:
        async with driver_connection(engine) as connection:
            outcome = await gateway_repository.store_user_message(
                connection,
                owner_id=admission.user_id,
                conversation_id=conversation_id,
                message_id=message_id,
                content="hi",
                client_message_id=None,
                event=event,
                default_model=MODEL,
                admission=admission,
                prices_json=PRICES.as_sql_json(),
            )
    except Exception as exc:
        refusal = over_limit_from(exc)
        if refusal is None:
            raise
        raise refusal from None
    assert outcome.stored_id == message_id
    return message_id


async def answer(
    engine: AsyncEngine, message_id: str, prompt: int | None, completion: int | None
) -> None:
    """The worker's claim and final-reply statements (failed when no tokens are given)."""
    reply_id = new_id(IdKind.MESSAGE)
    final = (
        worker_repository.FinalReply(MessageStatus.FAILED, error_code="x")
        if prompt is None
        else worker_repository.FinalReply(MessageStatus.COMPLETE, prompt, completion)
    )
    event = StagedEvent.of(
        ReplyCompleted(
            producer="test",
            user_id="u",
            correlation_id=message_id,
            conversation_id="c",
            message_id=reply_id,
            reply_to=message_id,
            model=MODEL,
            prompt_tokens=prompt or 0,
            completion_tokens=completion or 0,
            ttft_ms=1.0,
            duration_ms=2.0,
            finish_reason="stop",
        )
    )
    async with driver_connection(engine) as connection:
        await worker_repository.claim_request(
            connection,
            message_id,
            reply_id,
            default_model=MODEL,
            default_system_prompt="s",
            worker_id="w",
        )
        stored = await worker_repository.finish_reply(connection, reply_id, 1, "", 1, final, event)
    assert stored is worker_repository.FinishOutcome.STORED


async def counters(engine: AsyncEngine, subject: str) -> dict[str, Any]:
    async with driver_connection(engine) as connection:
        rows = await connection.fetch(
            "SELECT period, requests, used_tokens, reserved_tokens, used_usd, reserved_usd "
            "FROM budgets.counters WHERE subject_id = $1",
            subject,
        )
    return {row["period"]: dict(row) for row in rows}


async def set_limits(engine: AsyncEngine, subject: str, owner: str, **limits: Any) -> None:
    async with transaction(create_session_factory(engine)) as session:
        await ledger.set_limits(
            session,
            subject,
            owner,
            requests_per_minute=limits.get("requests_per_minute"),
            tokens_per_day=limits.get("tokens_per_day"),
            cost_per_month_usd=limits.get("cost_per_month_usd"),
        )


def asking(user: str, key: str | None = None, prompt: int = 400, reply: int = 600) -> Admission:
    return Admission(user, key, 1000, prompt, reply)


async def stored_user_messages(engine: AsyncEngine, conversation_id: str) -> int:
    async with driver_connection(engine) as connection:
        count: int = await connection.fetchval(
            "SELECT count(*) FROM chat.messages WHERE conversation_id = $1 AND role = 'user'",
            conversation_id,
        )
    return count


async def test_a_refused_request_stores_counts_and_reserves_nothing(engine):
    user, key = new_id(IdKind.USER), new_id(IdKind.API_KEY)
    conversation_id = await conversation(engine, user)
    await set_limits(engine, user, user, tokens_per_day=1500)
    await set_limits(engine, key, user, requests_per_minute=1)

    await send(engine, conversation_id, asking(user, key))
    with pytest.raises(OverLimit) as by_key:
        await send(engine, conversation_id, asking(user, key))
    assert (by_key.value.reason, by_key.value.limit, by_key.value.subject) == (
        "rate_limited",
        "requests_per_minute",
        "key",
    )
    assert 1 <= by_key.value.retry_after_s <= 60
    with pytest.raises(OverLimit) as by_budget:
        await send(engine, conversation_id, asking(user))
    assert (by_budget.value.reason, by_budget.value.limit, by_budget.value.subject) == (
        "budget_exceeded",
        "tokens_per_day",
        "user",
    )
    assert await stored_user_messages(engine, conversation_id) == 1
    mine = await counters(engine, user)
    assert (mine["day"]["requests"], mine["day"]["reserved_tokens"]) == (1, 1000)
    assert mine["minute"]["requests"] == 1  # the default rate counts; refusals do not
    assert (await counters(engine, key))["minute"]["requests"] == 1


async def test_the_final_reply_settles_tokens_and_cost_of_the_user_and_the_key(engine):
    user, key = new_id(IdKind.USER), new_id(IdKind.API_KEY)
    conversation_id = await conversation(engine, user)
    price = PRICES.price_of(MODEL)
    assert price is not None
    reserved_usd = (400 * price.input_per_million + 600 * price.output_per_million) / 1_000_000

    completed = await send(engine, conversation_id, asking(user, key))
    failed = await send(engine, conversation_id, asking(user, key))
    for subject in (user, key):
        month = (await counters(engine, subject))["month"]
        assert (month["reserved_tokens"], month["reserved_usd"]) == (2000, 2 * reserved_usd)
    await answer(engine, completed, 10, 20)
    await answer(engine, failed, None, None)

    real_usd = (10 * price.input_per_million + 20 * price.output_per_million) / 1_000_000
    for subject in (user, key):
        rows = await counters(engine, subject)
        for period in ("day", "month"):
            row = rows[period]
            assert (row["reserved_tokens"], row["reserved_usd"]) == (0, 0)
            assert (row["used_tokens"], row["used_usd"]) == (30, real_usd)
    async with driver_connection(engine) as connection:
        left = await connection.fetchval(
            "SELECT count(*) FROM budgets.reservations WHERE user_id = $1", user
        )
    assert left == 0


async def test_stale_reservations_and_old_minutes_are_released(engine):
    user = new_id(IdKind.USER)
    conversation_id = await conversation(engine, user)
    await send(engine, conversation_id, asking(user))
    long_ago = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=10)
    async with driver_connection(engine) as connection:
        await connection.execute(
            "INSERT INTO budgets.counters VALUES ($1, 'minute', $2, $1, 3, 0, 0, 0, 0)",
            user,
            long_ago,
        )
    async with transaction(create_session_factory(engine)) as session:
        assert await ledger.release_stale(session, timedelta(0)) >= 1
    rows = await counters(engine, user)
    assert rows["day"]["reserved_tokens"] == 0 and rows["month"]["reserved_usd"] == 0
    assert rows["day"]["used_tokens"] == 0 and rows["day"]["requests"] == 1
    async with driver_connection(engine) as connection:
        minutes = await connection.fetchval(
            "SELECT count(*) FROM budgets.counters WHERE subject_id = $1 AND period = 'minute'",
            user,
        )
    assert minutes == 1  # this minute's stays; the one ten minutes ago is forgotten


async def test_concurrent_admissions_and_settlements_stay_within_the_budget(engine):
    """Admissions and settlements of one user and key at once: the budget holds at every
    moment, and row locks taken in one order never deadlock (a deadlock would raise here)."""
    user, key = new_id(IdKind.USER), new_id(IdKind.API_KEY)
    conversation_id = await conversation(engine, user)
    budget_usd = Decimal("0.01")
    await set_limits(engine, user, user, tokens_per_day=3000)
    await set_limits(engine, key, user, cost_per_month_usd=budget_usd)

    async def one() -> bool:
        try:
            message_id = await send(engine, conversation_id, asking(user, key))
        except OverLimit as refusal:
            assert refusal.reason == "budget_exceeded"
            return False
        await answer(engine, message_id, 60, 40)
        return True

    admitted = sum(await asyncio.gather(*(one() for _ in range(40))))
    # Three worst cases (1000) fit at once; the k-th needs 100 (k - 1) + 1000 <= 3000.
    assert 3 <= admitted <= 21
    day = (await counters(engine, user))["day"]
    assert day["reserved_tokens"] == 0
    assert day["used_tokens"] == 100 * admitted
    assert day["requests"] == admitted
    assert (await counters(engine, key))["month"]["used_usd"] <= budget_usd

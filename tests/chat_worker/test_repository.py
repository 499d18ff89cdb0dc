"""The worker's hot-path statements, run twice as a retry after a lost connection would run
them: a commit whose answer never arrived must be recognised, never applied a second time."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from services.chat.models import Conversation, Message, MessageRole, MessageStatus, outbox
from services.chat_worker import repository
from services.chat_worker.repository import FinalReply, FinishOutcome
from shared.db import create_engine, create_session_factory, driver_connection, transaction
from shared.events import ReplyCompleted
from shared.ids import IdKind, new_id
from shared.outbox import StagedEvent


@pytest.fixture
async def engine(infra) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(infra.database_url, pool_size=1)
    yield engine
    await engine.dispose()


async def question(engine: AsyncEngine) -> Message:
    sessions = create_session_factory(engine)
    owner = new_id(IdKind.USER)
    message = Message(
        id=new_id(IdKind.MESSAGE),
        conversation_id=new_id(IdKind.CONVERSATION),
        role=MessageRole.USER.value,
        content="a question",
    )
    async with transaction(sessions) as session:
        session.add(Conversation(id=message.conversation_id, owner_id=owner, title="t"))
        await session.flush()
        session.add(message)
    return message


def completed(reply_id: str, reply_to: str, conversation_id: str) -> StagedEvent:
    return StagedEvent.of(
        ReplyCompleted(
            producer="test",
            user_id="u",
            correlation_id=reply_to,
            conversation_id=conversation_id,
            message_id=reply_id,
            reply_to=reply_to,
            model="m",
            prompt_tokens=1,
            completion_tokens=2,
            ttft_ms=1.0,
            duration_ms=2.0,
            finish_reason="stop",
        )
    )


async def outbox_rows(engine: AsyncEngine, event_ids: list[str]) -> int:
    async with engine.connect() as connection:
        count = await connection.scalar(
            select(func.count()).select_from(outbox).where(outbox.c.event_id.in_(event_ids))
        )
    return int(count or 0)


async def test_a_claim_run_twice_creates_one_reply(engine):
    asked = await question(engine)
    reply_id = new_id(IdKind.MESSAGE)
    async with driver_connection(engine) as connection:
        request, created = await repository.claim_request(
            connection,
            asked.id,
            reply_id,
            default_model="m",
            default_system_prompt="s",
            worker_id="w",
        )
        again, created_again = await repository.claim_request(
            connection,
            asked.id,
            reply_id,
            default_model="m",
            default_system_prompt="s",
            worker_id="w",
        )
    assert request is not None and created
    assert again == request and not created_again
    async with engine.connect() as connection:
        holder = await connection.scalar(select(Message.worker_id).where(Message.id == reply_id))
    assert holder == "w"  # gateways ask this worker alone about the reply


async def test_finishing_twice_is_recognised_and_stages_one_event(engine):
    asked = await question(engine)
    reply_id = new_id(IdKind.MESSAGE)
    text, final = "the answer", FinalReply(status=MessageStatus.COMPLETE)
    first = completed(reply_id, asked.id, asked.conversation_id)
    retry = completed(reply_id, asked.id, asked.conversation_id)
    async with driver_connection(engine) as connection:
        await repository.claim_request(
            connection,
            asked.id,
            reply_id,
            default_model="m",
            default_system_prompt="s",
            worker_id="w",
        )
        assert await repository.finish_reply(connection, reply_id, 1, text, 3, final, first) is (
            FinishOutcome.STORED
        )
        assert await repository.finish_reply(connection, reply_id, 1, text, 3, final, retry) is (
            FinishOutcome.ALREADY_STORED
        )
        # Another attempt, or another final state, is not this writer's.
        assert await repository.finish_reply(connection, reply_id, 2, text, 3, final, retry) is (
            FinishOutcome.SUPERSEDED
        )
        failed = FinalReply(status=MessageStatus.FAILED, error_code="x")
        assert await repository.finish_reply(connection, reply_id, 1, "", 3, failed, retry) is (
            FinishOutcome.SUPERSEDED
        )
    assert await outbox_rows(engine, [first.event_id]) == 1
    assert await outbox_rows(engine, [retry.event_id]) == 0

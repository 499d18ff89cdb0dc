"""Queries of the chat worker on the `chat` schema. Callers own the transaction."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.chat_worker.prompt import Turn
from services.gateway.models import (
    Assistant,
    Conversation,
    Message,
    MessageRole,
    MessageStatus,
)

HISTORY_MESSAGES = 100
"""User messages looked at for the prompt; the token budget usually keeps far fewer."""


async def load_request(
    session: AsyncSession, message_id: str
) -> tuple[Message, Conversation, Assistant | None] | None:
    row = (
        await session.execute(
            select(Message, Conversation, Assistant)
            .join(Conversation, Conversation.id == Message.conversation_id)
            .outerjoin(Assistant, Assistant.id == Conversation.assistant_id)
            .where(Message.id == message_id, Message.role == MessageRole.USER)
        )
    ).first()
    if row is None:
        return None
    return row[0], row[1], row[2]


async def insert_reply(session: AsyncSession, reply_id: str, question: Message, model: str) -> bool:
    """Create the (streaming) reply to `question`; False if it already has one."""
    inserted = await session.execute(
        insert(Message)
        .values(
            id=reply_id,
            conversation_id=question.conversation_id,
            role=MessageRole.ASSISTANT.value,
            content="",
            status=MessageStatus.STREAMING.value,
            reply_to=question.id,
            seq=0,
            attempt=1,
            model=model,
        )
        .on_conflict_do_nothing(constraint="uq_messages_reply_to")
        .returning(Message.id)
    )
    return inserted.first() is not None


async def lock_reply(session: AsyncSession, reply_to: str) -> Message | None:
    """The reply to `reply_to`, locked until the transaction ends (claims are serialised)."""
    return (
        await session.execute(select(Message).where(Message.reply_to == reply_to).with_for_update())
    ).scalar_one_or_none()


async def load_history(session: AsyncSession, question: Message) -> list[Turn]:
    """The conversation up to `question`, oldest first, each question followed by its answer."""
    questions = (
        (
            await session.execute(
                select(Message)
                .where(
                    Message.conversation_id == question.conversation_id,
                    Message.role == MessageRole.USER,
                    Message.created_at <= question.created_at,
                    Message.id != question.id,
                )
                .order_by(Message.created_at.desc(), Message.id.desc())
                .limit(HISTORY_MESSAGES)
            )
        )
        .scalars()
        .all()
    )
    answers: dict[str | None, str] = {}
    if questions:
        rows = await session.execute(
            select(Message.reply_to, Message.content).where(
                Message.reply_to.in_([q.id for q in questions]),
                Message.status.in_([MessageStatus.COMPLETE, MessageStatus.CANCELLED]),
                Message.content != "",
            )
        )
        answers = {reply_to: content for reply_to, content in rows.tuples()}
    turns: list[Turn] = []
    for q in reversed(questions):
        turns.append(Turn("user", q.content))
        if q.id in answers:
            turns.append(Turn("assistant", answers[q.id]))
    turns.append(Turn("user", question.content))
    return turns


async def persist_partials(session: AsyncSession, partials: Sequence[dict[str, Any]]) -> None:
    """Store several streaming replies' text and seq in one round trip (executemany)."""
    await session.execute(
        update(Message.__table__)  # type: ignore[arg-type]
        .where(
            and_(
                Message.__table__.c.id == bindparam("b_id"),
                Message.__table__.c.attempt == bindparam("b_attempt"),
                Message.__table__.c.status == MessageStatus.STREAMING,
            )
        )
        .values(content=bindparam("b_content"), seq=bindparam("b_seq"), updated_at=func.now()),
        [
            {
                "b_id": p["id"],
                "b_attempt": p["attempt"],
                "b_content": p["content"],
                "b_seq": p["seq"],
            }
            for p in partials
        ],
    )


async def update_streaming_reply(
    session: AsyncSession, reply_id: str, attempt: int, values: dict[str, Any]
) -> bool:
    """Change a reply this worker still owns (same attempt, still streaming); False if not."""
    result = await session.execute(
        update(Message)
        .where(
            Message.id == reply_id,
            Message.attempt == attempt,
            Message.status == MessageStatus.STREAMING,
        )
        .values(updated_at=func.now(), **values)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]

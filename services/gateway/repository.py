"""Queries of the `chat` schema. Never commits: the caller's unit of work does."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from sqlalchemy import Select, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.budgets.admission import REFUSAL, Admission, admission_ctes
from services.chat.models import (
    ASSISTANTS,
    CONVERSATIONS,
    MESSAGES,
    ORIGIN_CHAT,
    OUTBOX,
    Assistant,
    Conversation,
    ConversationStatus,
    Message,
    MessageRole,
    MessageStatus,
)
from shared.like_pattern import LIKE_ESCAPE, contains_pattern
from shared.outbox import StagedEvent, outbox_rows_for


async def _page(
    session: AsyncSession, query: Select[Any], skip: int, limit: int
) -> tuple[Sequence[Any], int]:
    total = await session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
    items = (await session.scalars(query.offset(skip).limit(limit))).all()
    return items, int(total or 0)


async def get_assistant(
    session: AsyncSession, owner_id: str, assistant_id: str
) -> Assistant | None:
    return await session.scalar(
        select(Assistant).where(Assistant.id == assistant_id, Assistant.owner_id == owner_id)
    )


async def list_assistants(
    session: AsyncSession, owner_id: str, skip: int, limit: int
) -> tuple[Sequence[Assistant], int]:
    query = (
        select(Assistant)
        .where(Assistant.owner_id == owner_id)
        .order_by(Assistant.created_at.desc(), Assistant.id)
    )
    return await _page(session, query, skip, limit)


async def get_conversation(
    session: AsyncSession, owner_id: str, conversation_id: str
) -> Conversation | None:
    return await session.scalar(
        select(Conversation).where(
            Conversation.id == conversation_id, Conversation.owner_id == owner_id
        )
    )


async def list_conversations(
    session: AsyncSession,
    owner_id: str,
    *,
    search: str | None,
    status: ConversationStatus | None,
    skip: int,
    limit: int,
) -> tuple[Sequence[Conversation], int]:
    query = select(Conversation).where(
        Conversation.owner_id == owner_id, Conversation.origin == ORIGIN_CHAT
    )
    if search:
        query = query.where(Conversation.title.ilike(contains_pattern(search), escape=LIKE_ESCAPE))
    if status is not None:
        query = query.where(Conversation.status == status.value)
    query = query.order_by(Conversation.updated_at.desc(), Conversation.id)
    return await _page(session, query, skip, limit)


async def list_messages(
    session: AsyncSession, conversation_id: str, skip: int, limit: int
) -> tuple[Sequence[Message], int]:
    query = (
        select(Message)
        .where(Message.conversation_id == conversation_id)
        .order_by(Message.created_at, Message.id)
    )
    return await _page(session, query, skip, limit)


async def recent_messages(session: AsyncSession, conversation_id: str, limit: int) -> list[Message]:
    """The newest `limit` messages, oldest first (what a subscribing client shows)."""
    rows = (
        await session.scalars(
            select(Message)
            .where(Message.conversation_id == conversation_id)
            .order_by(Message.created_at.desc(), Message.id.desc())
            .limit(limit)
        )
    ).all()
    return list(reversed(rows))


async def find_by_client_id(
    session: AsyncSession, conversation_id: str, client_message_id: str
) -> Message | None:
    return await session.scalar(
        select(Message).where(
            Message.conversation_id == conversation_id,
            Message.client_message_id == client_message_id,
        )
    )


@dataclass(frozen=True)
class StoreOutcome:
    """What `store_user_message` found: the conversation's status (None: not the owner's or
    gone), the id of an earlier copy of the message, or the id it stored now."""

    conversation_status: str | None
    earlier_id: str | None
    stored_id: str | None


_ADMISSION_FIRST = 12


def store_statement(*, with_admission: bool = True) -> str:
    """The statement of `store_user_message`. Without admission: only for the benchmark that
    measures what admission adds (bench/ledger_overhead.py)."""
    admission = ""
    refusal = ""
    if with_admission:
        model = "(SELECT model FROM conversation)"
        admission = f",\n{admission_ctes('stored', model, _ADMISSION_FIRST)}"
        refusal = f",\n       {REFUSAL}"
    # $n: conversation, owner, message, client id, content, the event (5), the default model,
    # then the admission's.
    return f"""
WITH conversation AS (
    SELECT c.id, c.status, coalesce(c.model, a.model, $11) AS model
    FROM {CONVERSATIONS} AS c LEFT JOIN {ASSISTANTS} AS a ON a.id = c.assistant_id
    WHERE c.id = $1 AND c.owner_id = $2
), earlier AS (
    SELECT id FROM {MESSAGES}
    WHERE conversation_id = $1 AND (id = $3 OR client_message_id = $4)
    LIMIT 1
), stored AS (
    INSERT INTO {MESSAGES}
        (id, conversation_id, role, content, status, client_message_id, seq, attempt)
    SELECT $3, id, '{MessageRole.USER.value}', $5, '{MessageStatus.COMPLETE.value}', $4, 0, 1
    FROM conversation
    WHERE status = '{ConversationStatus.ACTIVE.value}' AND NOT EXISTS (SELECT 1 FROM earlier)
    ON CONFLICT DO NOTHING
    RETURNING id, conversation_id
), touched AS (
    UPDATE {CONVERSATIONS} SET updated_at = now()
    WHERE id = (SELECT conversation_id FROM stored)
), {outbox_rows_for(OUTBOX, "stored", 6)}{admission}
SELECT (SELECT status FROM conversation) AS conversation_status,
       (SELECT id FROM earlier) AS earlier_id,
       (SELECT id FROM stored) AS stored_id{refusal}
"""  # noqa: S608 (only table names and enum values are interpolated; data are $n parameters)


# One statement, so one round trip and atomic without BEGIN/COMMIT: the ownership check, the
# resend check, the message, the conversation's `updated_at`, the outbox row and the budget
# ledger's admission together (a refusal raises, undoing all of it). `earlier` also matches
# the message's own id: a retry after a lost connection whose first attempt did commit finds
# that copy instead of storing a second.
_STORE_USER_MESSAGE = store_statement()


async def store_user_message(
    connection: asyncpg.Connection,
    *,
    owner_id: str,
    conversation_id: str,
    message_id: str,
    content: str,
    client_message_id: str | None,
    event: StagedEvent,
    default_model: str,
    admission: Admission,
    prices_json: str,
) -> StoreOutcome:
    """Store a user message and its event's outbox row unless the conversation is not the
    owner's, has ended, or already holds this message (by client id or id); a message stored
    is admitted by the ledger or the statement raises (`admission.over_limit_from`)."""
    row = await connection.fetchrow(
        _STORE_USER_MESSAGE,
        conversation_id,
        owner_id,
        message_id,
        client_message_id,
        content,
        *event.parameters(),
        default_model,
        *admission.parameters(prices_json),
    )
    assert row is not None
    return StoreOutcome(row["conversation_status"], row["earlier_id"], row["stored_id"])


async def find_reply(session: AsyncSession, message_id: str) -> Message | None:
    return await session.scalar(select(Message).where(Message.reply_to == message_id))


@dataclass(frozen=True)
class StatsRow:
    message_count: int
    user_messages: int
    assistant_messages: int
    failed_replies: int
    prompt_tokens: int
    completion_tokens: int
    avg_duration_ms: float | None
    avg_ttft_ms: float | None


async def conversation_stats(session: AsyncSession, conversation_id: str) -> StatsRow:
    is_user = Message.role == MessageRole.USER.value
    is_reply = Message.role == MessageRole.ASSISTANT.value
    completed = is_reply & (Message.status == MessageStatus.COMPLETE.value)
    row = (
        await session.execute(
            select(
                func.count(),
                func.count().filter(is_user),
                func.count().filter(is_reply),
                func.count().filter(is_reply & (Message.status == MessageStatus.FAILED.value)),
                func.coalesce(func.sum(Message.prompt_tokens), 0),
                func.coalesce(func.sum(Message.completion_tokens), 0),
                func.avg(case((completed, Message.duration_ms))),
                func.avg(case((completed, Message.ttft_ms))),
            ).where(Message.conversation_id == conversation_id)
        )
    ).one()
    return StatsRow(
        message_count=int(row[0]),
        user_messages=int(row[1]),
        assistant_messages=int(row[2]),
        failed_replies=int(row[3]),
        prompt_tokens=int(row[4]),
        completion_tokens=int(row[5]),
        avg_duration_ms=float(row[6]) if row[6] is not None else None,
        avg_ttft_ms=float(row[7]) if row[7] is not None else None,
    )

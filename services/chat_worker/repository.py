"""Queries of the chat worker on the `chat` schema.

The per-reply path (claim with history, finish with its event) is two single statements on
the driver connection (see `shared.db.driver_connection` for why); the rare
paths use SQLAlchemy in the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import asyncpg
import orjson
from sqlalchemy import and_, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.budgets.ledger import SETTLE_CTE
from services.chat.models import (
    ASSISTANTS,
    CONVERSATIONS,
    MESSAGES,
    OUTBOX,
    Message,
    MessageRole,
    MessageStatus,
)
from services.chat.replies import PROMPT_STATUSES
from services.chat_worker.prompt import Turn
from shared.outbox import StagedEvent, outbox_rows_for

HISTORY_MESSAGES = 100
"""User messages looked at for the prompt; the token budget usually keeps far fewer."""


@dataclass(frozen=True)
class Request:
    """A user message to answer, with what its conversation (or assistant) says about the
    reply, and the history the prompt is built from (oldest first, ending with the message)."""

    message_id: str
    conversation_id: str
    owner_id: str
    model: str
    temperature: float | None
    system_prompt: str
    history: list[Turn]
    assistant_id: str | None = None
    """The assistant the conversation was started from, whose files the prompt may draw on."""
    api_key_id: str | None = None
    """The API key a `/v1` request came with; its reply's events name it for analytics."""
    max_tokens: int | None = None
    """The request's own limit on the reply (a `/v1` request's `max_tokens`)."""


_PROMPT_STATUSES = ", ".join(f"'{status.value}'" for status in PROMPT_STATUSES)

# One statement: read the message `$1` with its conversation and assistant (defaults `$3`,
# `$5`) and the newest `$4` earlier questions, each with its answer if that answer has text and
# `PROMPT_STATUSES`; and create the (streaming) reply `$2`, held by worker `$6`, unless the
# message already has one.
_CLAIM_REQUEST = f"""
WITH request AS (
    SELECT m.id, m.conversation_id, m.content, m.created_at, c.owner_id, c.assistant_id,
           c.api_key_id, c.max_tokens,
           coalesce(c.model, a.model, $3) AS model,
           coalesce(c.temperature, a.temperature) AS temperature,
           coalesce(nullif(c.system_prompt, ''), nullif(a.system_prompt, ''), $5) AS system_prompt
    FROM {MESSAGES} AS m
    JOIN {CONVERSATIONS} AS c ON c.id = m.conversation_id
    LEFT JOIN {ASSISTANTS} AS a ON a.id = c.assistant_id
    WHERE m.id = $1 AND m.role = '{MessageRole.USER.value}'
), inserted AS (
    INSERT INTO {MESSAGES}
        (id, conversation_id, role, content, status, reply_to, seq, attempt, model, worker_id)
    SELECT $2, conversation_id, '{MessageRole.ASSISTANT.value}', '',
           '{MessageStatus.STREAMING.value}', id, 0, 1, model, $6
    FROM request
    ON CONFLICT ON CONSTRAINT uq_messages_reply_to DO NOTHING
    RETURNING id
)
SELECT request.*,
       (SELECT count(*) FROM inserted) AS inserted,
       (SELECT json_agg(json_build_array(q.content, r.content) ORDER BY q.created_at, q.id)
        FROM (SELECT id, content, created_at FROM {MESSAGES}
              WHERE conversation_id = request.conversation_id
                AND role = '{MessageRole.USER.value}'
                AND created_at <= request.created_at AND id <> request.id
              ORDER BY created_at DESC, id DESC
              LIMIT $4) AS q
        LEFT JOIN {MESSAGES} AS r
          ON r.reply_to = q.id AND r.content <> ''
         AND r.status IN ({_PROMPT_STATUSES})
       ) AS history
FROM request
"""  # noqa: S608 (only table names and enum values are interpolated; data are $n parameters)


async def claim_request(
    connection: asyncpg.Connection,
    message_id: str,
    reply_id: str,
    *,
    default_model: str,
    default_system_prompt: str,
    worker_id: str,
) -> tuple[Request | None, bool]:
    """The request to answer (None: no such user message) and whether its reply `reply_id`
    was created now, held by `worker_id` (False: the message already has a reply). The
    conversation's model and system prompt, else its assistant's, else the defaults."""
    row = await connection.fetchrow(
        _CLAIM_REQUEST,
        message_id,
        reply_id,
        default_model,
        HISTORY_MESSAGES,
        default_system_prompt,
        worker_id,
    )
    if row is None:
        return None, False
    # `json` as text: the driver connection has no JSON codec (`shared.db.driver_connection`).
    pairs = orjson.loads(row["history"]) if row["history"] else []
    history: list[Turn] = []
    for question, answer in pairs:
        history.append(Turn("user", question))
        if answer is not None:
            history.append(Turn("assistant", answer))
    history.append(Turn("user", row["content"]))
    request = Request(
        message_id=message_id,
        conversation_id=row["conversation_id"],
        owner_id=row["owner_id"],
        model=row["model"],
        temperature=row["temperature"],
        system_prompt=row["system_prompt"],
        history=history,
        assistant_id=row["assistant_id"],
        api_key_id=row["api_key_id"],
        max_tokens=row["max_tokens"],
    )
    return request, bool(row["inserted"])


@dataclass(frozen=True)
class FinalReply:
    """A reply's terminal state besides its text and `seq`; fields an outcome does not have
    stay NULL."""

    status: MessageStatus
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    usage_estimated: bool = False
    ttft_ms: float | None = None
    duration_ms: float | None = None
    finish_reason: str | None = None
    error_code: str | None = None


# The final state and its outcome event, atomically, only by the attempt that owns the reply.
_FINISH_REPLY = f"""
WITH finished AS (
    UPDATE {MESSAGES}
    SET content = $3, seq = $4, status = $5, prompt_tokens = $6, completion_tokens = $7,
        ttft_ms = $8, duration_ms = $9, finish_reason = $10, error_code = $11,
        usage_estimated = $12, updated_at = now()
    WHERE id = $1 AND attempt = $2 AND status = '{MessageStatus.STREAMING.value}'
    RETURNING id, reply_to
), {outbox_rows_for(OUTBOX, "finished", 13)},
{SETTLE_CTE("finished", "coalesce($6::int, 0)", "coalesce($7::int, 0)")}
SELECT (SELECT count(*) FROM finished) AS finished,
       EXISTS (SELECT 1 FROM {MESSAGES}
               WHERE id = $1 AND attempt = $2 AND status = $5 AND seq = $4) AS already
"""  # noqa: S608 (only table names and enum values are interpolated; data are $n parameters)


class FinishOutcome(Enum):
    STORED = "stored"
    ALREADY_STORED = "already_stored"
    """This very final state was stored before (a retry after an unanswered commit)."""
    SUPERSEDED = "superseded"
    """Another attempt owns the reply, or it is gone."""


async def finish_reply(
    connection: asyncpg.Connection,
    reply_id: str,
    attempt: int,
    content: str,
    seq: int,
    final: FinalReply,
    event: StagedEvent,
) -> FinishOutcome:
    """Store `final` with the reply's whole text and last `seq`, and its event, if this attempt
    still owns the reply (the statement sees the row as it was before it, so `already` means
    an earlier commit of the same state)."""
    row = await connection.fetchrow(
        _FINISH_REPLY,
        reply_id,
        attempt,
        content,
        seq,
        final.status.value,
        final.prompt_tokens,
        final.completion_tokens,
        final.ttft_ms,
        final.duration_ms,
        final.finish_reason,
        final.error_code,
        final.usage_estimated,
        *event.parameters(),
    )
    assert row is not None
    if row["finished"]:
        return FinishOutcome.STORED
    return FinishOutcome.ALREADY_STORED if row["already"] else FinishOutcome.SUPERSEDED


async def lock_reply(session: AsyncSession, reply_to: str) -> Message | None:
    """The reply to `reply_to`, locked until the transaction ends (claims are serialised)."""
    return (
        await session.execute(select(Message).where(Message.reply_to == reply_to).with_for_update())
    ).scalar_one_or_none()


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

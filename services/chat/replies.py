"""Rules about a reply's state that the gateway and the chat workers both follow.

A reply is the one `messages` row (role `assistant`) whose `reply_to` is a user message. While
it is `streaming`, only the worker holding its current `attempt` may change it (a fencing
token); a finished reply never changes again. Everything a client sees of a reply is ordered by
its position `(attempt, seq)`: a newer attempt replaces what came before, and within an attempt
a higher `seq` is newer.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import NamedTuple, Protocol

from services.chat.models import MessageRole, MessageStatus

FINISHED_STATUSES = frozenset(
    {MessageStatus.COMPLETE, MessageStatus.FAILED, MessageStatus.CANCELLED}
)
"""A reply in one of these states is final: no worker writes it again."""

PROMPT_STATUSES = (MessageStatus.COMPLETE, MessageStatus.CANCELLED)
"""Replies whose text (when not empty) a later prompt includes as the assistant's turn."""

AWAITING_REPLY_WINDOW = timedelta(minutes=5)
"""A user message younger than this without a reply row may have one streaming unseen (a worker
streams from memory before its row is written)."""


class ReplyPosition(NamedTuple):
    """Where a frame or a stored partial stands in its reply; tuples compare as the rule says."""

    attempt: int
    seq: int


class StoredMessage(Protocol):
    """The columns of a `messages` row these rules look at."""

    @property
    def id(self) -> str: ...
    @property
    def role(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def reply_to(self) -> str | None: ...
    @property
    def created_at(self) -> datetime: ...


def is_finished(status: str) -> bool:
    return status in FINISHED_STATUSES


def is_streaming_reply(message: StoredMessage) -> bool:
    return message.role == MessageRole.ASSISTANT and message.status == MessageStatus.STREAMING


def is_finished_reply(message: StoredMessage) -> bool:
    return message.role == MessageRole.ASSISTANT and is_finished(message.status)


def awaiting_reply(messages: Iterable[StoredMessage], now: datetime) -> set[str]:
    """Ids of the recent user messages among `messages` that no reply row answers yet."""
    listed = list(messages)
    answered = {m.reply_to for m in listed if m.reply_to is not None}
    recent = now - AWAITING_REPLY_WINDOW
    return {
        m.id
        for m in listed
        if m.role == MessageRole.USER and m.id not in answered and m.created_at > recent
    }


def is_own_first_claim(
    own_reply_id: str, existing_id: str, existing_attempt: int, existing_status: str
) -> bool:
    """Whether an existing reply row is the one this claim itself created (its first try
    committed, but the answer was lost with the connection)."""
    return (
        existing_id == own_reply_id
        and existing_attempt == 1
        and existing_status == MessageStatus.STREAMING
    )


def may_take_over(
    status: str,
    updated_at: datetime,
    *,
    redelivered: bool,
    now: datetime,
    stale_after_s: float,
) -> bool:
    """Whether a worker may regenerate a reply another attempt started.

    Only a streaming reply; at once if the broker redelivered the request (it does so only when
    the holder's channel is gone), otherwise when the reply has been idle for `stale_after_s`.
    """
    if status != MessageStatus.STREAMING:
        return False
    if redelivered:
        return True
    return (now - updated_at).total_seconds() > stale_after_s

"""What one batch of events adds to each metric row, merged in memory before it is written.

Plain values, no I/O: `projection.py` fills them, `upserts.py` writes them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from shared.events import ReplyCancelled, ReplyCompleted, ReplyFailed

TTFT_FINE_LIMIT_MS = 10_000
"""Below this, time to first token is kept to the millisecond; above, to 100 ms."""
TTFT_MAX_BUCKET_MS = 3_600_000


def utc_day(moment: datetime) -> date:
    if moment.tzinfo is None:
        return moment.date()
    return moment.astimezone(UTC).date()


def ttft_bucket(ttft_ms: float) -> int:
    """Millisecond resolution where percentiles matter, 100 ms beyond, capped at an hour."""
    value = max(0.0, ttft_ms)
    if value < TTFT_FINE_LIMIT_MS - 0.5:
        return math.floor(value + 0.5)
    return min(int(value // 100) * 100, TTFT_MAX_BUCKET_MS)


def clip(value: str | None, length: int) -> str | None:
    return value[:length] if value is not None else None


def earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else min(a, b)


def latest(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else max(a, b)


USER_COUNTERS = (
    "logins",
    "conversations",
    "user_messages",
    "replies",
    "prompt_tokens",
    "completion_tokens",
)


@dataclass
class UserDelta:
    first_seen_at: datetime
    last_seen_at: datetime
    username: str | None = None
    roles: list[str] | None = None
    roles_set_at: datetime | None = None
    is_active: bool | None = None
    is_active_set_at: datetime | None = None
    registered_at: datetime | None = None
    deleted_at: datetime | None = None
    last_login_at: datetime | None = None
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(USER_COUNTERS, 0))
    cost_usd: Decimal = Decimal(0)

    def row(self, user_id: str) -> dict[str, Any]:
        return {
            "user_id": user_id,
            # A deleted account is anonymous, whatever name a later (older) event carries.
            "username": None if self.deleted_at is not None else self.username,
            "roles": self.roles,
            "roles_set_at": self.roles_set_at,
            "is_active": True if self.is_active is None else self.is_active,
            "is_active_set_at": self.is_active_set_at,
            "registered_at": self.registered_at,
            "deleted_at": self.deleted_at,
            "first_seen_at": self.first_seen_at,
            "last_seen_at": self.last_seen_at,
            "last_login_at": self.last_login_at,
            "cost_usd": self.cost_usd,
            **self.counters,
        }


CONVERSATION_COUNTERS = (
    "user_messages",
    "replies_completed",
    "replies_failed",
    "replies_cancelled",
    "prompt_tokens",
    "completion_tokens",
)


@dataclass
class ConversationDelta:
    started_at: datetime
    last_activity_at: datetime
    user_id: str | None = None
    model: str | None = None
    assistant_id: str | None = None
    created_at: datetime | None = None
    ended_at: datetime | None = None
    deleted_at: datetime | None = None
    counters: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(CONVERSATION_COUNTERS, 0)
    )
    cost_usd: Decimal = Decimal(0)
    reply_duration_ms_total: float = 0.0
    ttft_ms_total: float = 0.0

    def row(self, conversation_id: str) -> dict[str, Any]:
        return {
            "conversation_id": conversation_id,
            "user_id": self.user_id,
            "model": self.model,
            "assistant_id": self.assistant_id,
            "started_at": self.started_at,
            "created_at": self.created_at,
            "last_activity_at": self.last_activity_at,
            "ended_at": self.ended_at,
            "deleted_at": self.deleted_at,
            "cost_usd": self.cost_usd,
            "reply_duration_ms_total": self.reply_duration_ms_total,
            "ttft_ms_total": self.ttft_ms_total,
            **self.counters,
        }


@dataclass
class ApiKeyDelta:
    """What a batch's `api_key.*` events say about one key."""

    user_id: str | None = None
    name: str | None = None
    prefix: str | None = None
    created_at: datetime | None = None
    revoked_at: datetime | None = None

    def row(self, key_id: str) -> dict[str, Any]:
        return {
            "key_id": key_id,
            "user_id": self.user_id,
            "name": self.name,
            "prefix": self.prefix,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
        }


class Sums:
    """Additive columns of one rollup row."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def add(self, column: str, amount: Any) -> None:
        self.values[column] = self.values.get(column, 0) + amount


@dataclass
class ReplyRow:
    row: dict[str, Any]
    event: ReplyCompleted | ReplyFailed | ReplyCancelled

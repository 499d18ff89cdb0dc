"""Turning a batch of events into metric rows, exactly once per event id.

`EventIngestor.ingest` runs inside the caller's transaction: it records every event id in
`processed_events` (unique) and applies only the events whose id was new, all as additive
upserts. Commit, and each event has counted once; roll back, and none has. Rows are written in
key order so that two consumers committing overlapping batches cannot deadlock each other.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import cached_property
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    Integer,
    Numeric,
    Table,
    TextClause,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from services.analytics_consumer import models
from services.analytics_consumer.pricing import PriceTable
from shared.events import (
    ConversationCreated,
    ConversationDeleted,
    ConversationEnded,
    ConversationRenamed,
    Event,
    FileFailed,
    FileProcessed,
    FileUploaded,
    HttpRequestCompleted,
    MessageSent,
    ReplyCancelled,
    ReplyCompleted,
    ReplyFailed,
    UserDeleted,
    UserLoggedIn,
    UserLoggedOut,
    UserLoginFailed,
    UserRegistered,
    UserUpdated,
)

log = logging.getLogger(__name__)

TTFT_FINE_LIMIT_MS = 10_000
"""Below this, time to first token is kept to the millisecond; above, to 100 ms."""
TTFT_MAX_BUCKET_MS = 3_600_000


@dataclass(frozen=True)
class UnknownEvent:
    """A well-formed envelope whose type this consumer does not know (a newer producer)."""

    event_id: uuid.UUID
    type: str
    occurred_at: datetime


Incoming = Event | UnknownEvent


@dataclass(frozen=True)
class IngestResult:
    applied: int
    duplicates: int
    unknown_types: dict[str, int]


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


def _clip(value: str | None, length: int) -> str | None:
    return value[:length] if value is not None else None


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else min(a, b)


def _latest(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else max(a, b)


# --- per-batch accumulators -------------------------------------------------------------------


_USER_COUNTERS = (
    "logins",
    "conversations",
    "user_messages",
    "replies",
    "prompt_tokens",
    "completion_tokens",
)


@dataclass
class _UserDelta:
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
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_USER_COUNTERS, 0))
    cost_usd: Decimal = Decimal(0)

    def row(self, user_id: str) -> dict[str, Any]:
        return {
            "user_id": user_id,
            "username": self.username,
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


_CONVERSATION_COUNTERS = (
    "user_messages",
    "replies_completed",
    "replies_failed",
    "replies_cancelled",
    "prompt_tokens",
    "completion_tokens",
)


@dataclass
class _ConversationDelta:
    started_at: datetime
    last_activity_at: datetime
    user_id: str | None = None
    model: str | None = None
    assistant_id: str | None = None
    created_at: datetime | None = None
    ended_at: datetime | None = None
    deleted_at: datetime | None = None
    counters: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(_CONVERSATION_COUNTERS, 0)
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


class _Sums:
    """Additive columns of one rollup row."""

    __slots__ = ("values",)

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def add(self, column: str, amount: Any) -> None:
        self.values[column] = self.values.get(column, 0) + amount


@dataclass
class _ReplyRow:
    row: dict[str, Any]
    event: ReplyCompleted | ReplyFailed | ReplyCancelled


@dataclass
class BatchEffects:
    """Everything one batch changes, merged in memory before a handful of upserts."""

    prices: PriceTable
    users: dict[str, _UserDelta] = field(default_factory=dict)
    conversations: dict[str, _ConversationDelta] = field(default_factory=dict)
    activities: list[dict[str, Any]] = field(default_factory=list)
    replies: dict[str, _ReplyRow] = field(default_factory=dict)
    daily: defaultdict[date, _Sums] = field(default_factory=lambda: defaultdict(_Sums))
    daily_users: defaultdict[tuple[date, str], _Sums] = field(
        default_factory=lambda: defaultdict(_Sums)
    )
    daily_models: defaultdict[tuple[date, str], _Sums] = field(
        default_factory=lambda: defaultdict(_Sums)
    )
    ttft: defaultdict[tuple[str, int], int] = field(default_factory=lambda: defaultdict(int))
    api: dict[tuple[date, str, str, str, int], list[float]] = field(default_factory=dict)
    counters: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))

    # -- touching rows --

    def _user(self, user_id: str, at: datetime) -> _UserDelta:
        delta = self.users.get(user_id)
        if delta is None:
            delta = self.users[user_id] = _UserDelta(first_seen_at=at, last_seen_at=at)
        else:
            delta.first_seen_at = min(delta.first_seen_at, at)
            delta.last_seen_at = max(delta.last_seen_at, at)
        return delta

    def _active(self, user_id: str, day: date) -> _Sums:
        return self.daily_users[(day, user_id)]

    def _conversation(self, conversation_id: str, at: datetime) -> _ConversationDelta:
        delta = self.conversations.get(conversation_id)
        if delta is None:
            delta = self.conversations[conversation_id] = _ConversationDelta(
                started_at=at, last_activity_at=at
            )
        else:
            delta.started_at = min(delta.started_at, at)
            delta.last_activity_at = max(delta.last_activity_at, at)
        return delta

    def _activity(
        self,
        event: Event,
        activity_type: str,
        *,
        username: str | None = None,
        ip: str | None = None,
        user_agent: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        self.activities.append(
            {
                "event_id": event.event_id,
                "user_id": event.user_id,
                "username": _clip(username, models.NAME_LENGTH),
                "activity_type": activity_type,
                "ip": _clip(ip, 64),
                "user_agent": _clip(user_agent, models.USER_AGENT_LENGTH),
                "details": details,
                "source": "event",
                "occurred_at": event.occurred_at,
            }
        )

    # -- events --

    def add(self, event: Event) -> None:
        """Record an event whose id is new; replies only stage a row (see `add_reply`)."""
        # A dict lookup, not `match`: isinstance on pydantic models goes through ABCMeta and
        # was the single largest Python cost per event.
        handler = _EVENT_HANDLERS.get(event.type)
        if handler is not None:
            handler(self, event)

    def _user_registered(self, event: UserRegistered) -> None:
        self._activity(
            event, "registration", username=event.username, ip=event.ip, user_agent=event.user_agent
        )
        day = utc_day(event.occurred_at)
        self.daily[day].add("new_users", 1)
        if event.user_id:
            user = self._user(event.user_id, event.occurred_at)
            user.username = event.username
            user.registered_at = _earliest(user.registered_at, event.occurred_at)
            self._set_roles(user, event.roles, event.occurred_at)
            self._active(event.user_id, day)

    def _user_logged_in(self, event: UserLoggedIn) -> None:
        self._activity(
            event, "login", username=event.username, ip=event.ip, user_agent=event.user_agent
        )
        day = utc_day(event.occurred_at)
        self.daily[day].add("logins", 1)
        if event.user_id:
            user = self._user(event.user_id, event.occurred_at)
            user.username = user.username or event.username
            user.last_login_at = _latest(user.last_login_at, event.occurred_at)
            user.counters["logins"] += 1
            self._active(event.user_id, day).add("logins", 1)

    def _user_login_failed(self, event: UserLoginFailed) -> None:
        self._activity(
            event,
            "login_failed",
            username=event.username_attempted,
            ip=event.ip,
            user_agent=event.user_agent,
            details={"reason": event.reason},
        )
        self.daily[utc_day(event.occurred_at)].add("failed_logins", 1)

    def _user_logged_out(self, event: UserLoggedOut) -> None:
        self._activity(event, "logout", ip=event.ip, user_agent=event.user_agent)
        day = utc_day(event.occurred_at)
        self.daily[day].add("logouts", 1)
        if event.user_id:
            self._user(event.user_id, event.occurred_at)
            self._active(event.user_id, day)

    def _user_updated(self, event: UserUpdated) -> None:
        self._activity(
            event,
            "profile_updated",
            details={"changed_fields": event.changed_fields, "actor_id": event.actor_id},
        )
        if not event.user_id:
            return
        user = self._user(event.user_id, event.occurred_at)
        if event.roles is not None:
            self._set_roles(user, event.roles, event.occurred_at)
        if event.is_active is not None and (
            user.is_active_set_at is None or event.occurred_at >= user.is_active_set_at
        ):
            user.is_active = event.is_active
            user.is_active_set_at = event.occurred_at

    def _user_deleted(self, event: UserDeleted) -> None:
        self._activity(event, "account_deleted", details={"actor_id": event.actor_id})
        if event.user_id:
            user = self._user(event.user_id, event.occurred_at)
            user.deleted_at = _earliest(user.deleted_at, event.occurred_at)

    def _conversation_created(self, event: ConversationCreated) -> None:
        conversation = self._conversation(event.conversation_id, event.occurred_at)
        conversation.created_at = _earliest(conversation.created_at, event.occurred_at)
        conversation.model = _clip(event.model, models.MODEL_LENGTH) or conversation.model
        conversation.assistant_id = event.assistant_id or conversation.assistant_id
        day = utc_day(event.occurred_at)
        self.daily[day].add("conversations_created", 1)
        if event.user_id:
            conversation.user_id = event.user_id
            self._user(event.user_id, event.occurred_at).counters["conversations"] += 1
            self._active(event.user_id, day).add("conversations_created", 1)

    def _conversation_touched(self, event: ConversationRenamed) -> None:
        self._owned_conversation(event.conversation_id, event)

    def _conversation_ended(self, event: ConversationEnded) -> None:
        conversation = self._owned_conversation(event.conversation_id, event)
        conversation.ended_at = _earliest(conversation.ended_at, event.occurred_at)

    def _conversation_deleted(self, event: ConversationDeleted) -> None:
        conversation = self._owned_conversation(event.conversation_id, event)
        conversation.deleted_at = _earliest(conversation.deleted_at, event.occurred_at)

    def _message_sent(self, event: MessageSent) -> None:
        conversation = self._owned_conversation(event.conversation_id, event)
        conversation.counters["user_messages"] += 1
        day = utc_day(event.occurred_at)
        self.daily[day].add("user_messages", 1)
        if event.user_id:
            self._user(event.user_id, event.occurred_at).counters["user_messages"] += 1
            self._active(event.user_id, day).add("user_messages", 1)

    def _set_roles(self, user: _UserDelta, roles: list[str], at: datetime) -> None:
        if user.roles_set_at is None or at >= user.roles_set_at:
            user.roles = [role[:32] for role in roles]
            user.roles_set_at = at

    def _owned_conversation(self, conversation_id: str, event: Event) -> _ConversationDelta:
        conversation = self._conversation(conversation_id, event.occurred_at)
        if event.user_id and conversation.user_id is None:
            conversation.user_id = event.user_id
        return conversation

    def _stage_reply(self, event: ReplyCompleted | ReplyFailed | ReplyCancelled) -> None:
        if event.message_id in self.replies:
            # Two outcomes for one reply in one batch: the first wins, as it would across batches.
            return
        model = _clip(event.model, models.MODEL_LENGTH) or models.UNKNOWN_MODEL
        prompt_tokens = getattr(event, "prompt_tokens", 0)
        completion_tokens = getattr(event, "completion_tokens", 0)
        cost = self.prices.cost(model, prompt_tokens, completion_tokens)
        ttft: float | None = None
        finish: str | None = None
        error: str | None = None
        if isinstance(event, ReplyCompleted):
            status, ttft, finish = "completed", event.ttft_ms, event.finish_reason
        elif isinstance(event, ReplyFailed):
            status, error = "failed", event.error_code
        else:
            status = "cancelled"
        self.replies[event.message_id] = _ReplyRow(
            row={
                "message_id": event.message_id,
                "event_id": event.event_id,
                "conversation_id": event.conversation_id,
                "user_id": event.user_id,
                "reply_to": event.reply_to,
                "model": model,
                "status": status,
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "cost_usd": cost.usd,
                "price_known": cost.price_known,
                "ttft_ms": ttft,
                "duration_ms": event.duration_ms,
                "finish_reason": _clip(finish, 32),
                "error_code": _clip(error, 64),
                "occurred_at": event.occurred_at,
            },
            event=event,
        )

    def add_reply(self, reply: _ReplyRow) -> None:
        """Count a reply whose row was new (its message id had no outcome yet)."""
        row, event = reply.row, reply.event
        day = utc_day(event.occurred_at)
        status: str = row["status"]
        model: str = row["model"]
        tokens = {
            "prompt_tokens": row["prompt_tokens"],
            "completion_tokens": row["completion_tokens"],
        }
        cost: Decimal = row["cost_usd"]
        daily, per_model = self.daily[day], self.daily_models[(day, model)]
        conversation = self._owned_conversation(event.conversation_id, event)
        counter = f"replies_{status}"
        for sums in (daily, per_model):
            sums.add(counter, 1)
            sums.add("cost_usd", cost)
            for name, value in tokens.items():
                sums.add(name, value)
        conversation.counters[counter] += 1
        conversation.cost_usd += cost
        for name, value in tokens.items():
            conversation.counters[name] += value
        if not row["price_known"]:
            per_model.add("unpriced_replies", 1)
            self.counters["unpriced_replies"] += 1
        if status == "completed":
            duration, ttft = row["duration_ms"], row["ttft_ms"] or 0.0
            for sums in (daily, per_model):
                sums.add("reply_duration_ms_total", duration)
                sums.add("ttft_ms_total", ttft)
            conversation.reply_duration_ms_total += duration
            conversation.ttft_ms_total += ttft
            bucket = ttft_bucket(ttft)
            self.ttft[(model, bucket)] += 1
            self.ttft[(models.ALL_MODELS, bucket)] += 1
        if event.user_id:
            user = self._user(event.user_id, event.occurred_at)
            user.counters["replies"] += 1
            user.cost_usd += cost
            active = self._active(event.user_id, day)
            active.add("replies", 1)
            active.add("cost_usd", cost)
            for name, value in tokens.items():
                user.counters[name] += value
                active.add(name, value)

    def _count_file_event(self, event: FileUploaded | FileProcessed | FileFailed) -> None:
        """Knowledge files: how many were uploaded, indexed and refused (by reason)."""
        self.counters[event.type] += 1
        if isinstance(event, FileFailed):
            self.counters[f"file.failed.{event.reason[:64]}"] += 1
        elif isinstance(event, FileProcessed):
            self.counters["file.chunks_indexed"] += event.chunks

    def _add_http(self, event: HttpRequestCompleted) -> None:
        service = event.service[:64]
        for request in event.requests:
            day = utc_day(request.occurred_at)
            key = (
                day,
                service,
                request.route[: models.ROUTE_LENGTH],
                request.method.upper()[:16],
                request.status,
            )
            duration = max(0.0, request.duration_ms)
            totals = self.api.get(key)
            if totals is None:
                self.api[key] = [1, duration, duration]
            else:
                totals[0] += 1
                totals[1] += duration
                totals[2] = max(totals[2], duration)
            daily = self.daily[day]
            daily.add("api_calls", 1)
            daily.add("api_duration_ms_total", duration)
            if request.status >= 500:
                daily.add("api_server_errors", 1)
            elif request.status >= 400:
                daily.add("api_client_errors", 1)


_EVENT_HANDLERS: dict[str, Callable[[BatchEffects, Any], None]] = {
    UserRegistered.routing_key: BatchEffects._user_registered,
    UserLoggedIn.routing_key: BatchEffects._user_logged_in,
    UserLoginFailed.routing_key: BatchEffects._user_login_failed,
    UserLoggedOut.routing_key: BatchEffects._user_logged_out,
    UserUpdated.routing_key: BatchEffects._user_updated,
    UserDeleted.routing_key: BatchEffects._user_deleted,
    ConversationCreated.routing_key: BatchEffects._conversation_created,
    ConversationRenamed.routing_key: BatchEffects._conversation_touched,
    ConversationEnded.routing_key: BatchEffects._conversation_ended,
    ConversationDeleted.routing_key: BatchEffects._conversation_deleted,
    MessageSent.routing_key: BatchEffects._message_sent,
    ReplyCompleted.routing_key: BatchEffects._stage_reply,
    ReplyFailed.routing_key: BatchEffects._stage_reply,
    ReplyCancelled.routing_key: BatchEffects._stage_reply,
    HttpRequestCompleted.routing_key: BatchEffects._add_http,
    FileUploaded.routing_key: BatchEffects._count_file_event,
    FileProcessed.routing_key: BatchEffects._count_file_event,
    FileFailed.routing_key: BatchEffects._count_file_event,
}
"""What each event type changes; types not listed (`reply.started`) carry nothing kept here."""


# --- writing -----------------------------------------------------------------------------------
#
# Every write is one statement per table per batch: the rows travel as one array per column
# (`unnest`), which asyncpg encodes in C. Row-by-row `executemany` cost more CPU in Python than
# the database spent on the upserts.


def _table(model: type[models.Base]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


def _array_type(column: Column[Any]) -> str:
    match column.type:
        case Uuid():
            return "uuid[]"
        case Date():
            return "date[]"
        case DateTime():
            return "timestamptz[]"
        case Boolean():
            return "boolean[]"
        case BigInteger():
            return "bigint[]"
        case Integer():
            return "integer[]"
        case Numeric() if not isinstance(column.type, Float):
            return "numeric[]"
        case Float():
            return "double precision[]"
        case _:
            # Strings; JSON documents and role lists travel as JSON text, see `_select_expr`.
            return "text[]"


def _select_expr(column: Column[Any]) -> str:
    name = column.name
    if isinstance(column.type, JSONB):
        return f"CAST({name} AS jsonb)"
    if isinstance(column.type, ARRAY):
        # A list per row cannot ride in a 2-D array (unnest would flatten it): JSON text instead.
        return (
            f"CASE WHEN {name} IS NULL THEN NULL "
            f"ELSE ARRAY(SELECT jsonb_array_elements_text(CAST({name} AS jsonb))) END"
        )
    return name


@dataclass(frozen=True)
class BulkUpsert:
    """`INSERT ... SELECT FROM unnest(...) ON CONFLICT ...` for one table, built once."""

    table: Table
    columns: tuple[str, ...]
    keys: tuple[str, ...]
    updates: Mapping[str, str]
    """Column → SQL for its new value (`t` is the stored row, `excluded` the incoming one)."""
    returning: str = ""

    @classmethod
    def additive(
        cls, model: type[models.Base], keys: tuple[str, ...], returning: str = ""
    ) -> BulkUpsert:
        """A rollup: every non-key column is a sum."""
        table = _table(model)
        columns = tuple(c.name for c in table.columns)
        sums = {c: f"t.{c} + excluded.{c}" for c in columns if c not in keys}
        return cls(table, columns, keys, sums, returning)

    @cached_property
    def statement(self) -> TextClause:
        return text(self.sql())

    def sql(self) -> str:
        arrays = ", ".join(f"CAST(:{c} AS {_array_type(self.table.c[c])})" for c in self.columns)
        select = ", ".join(_select_expr(self.table.c[c]) for c in self.columns)
        columns = ", ".join(self.columns)
        conflict = (
            "DO UPDATE SET " + ", ".join(f"{c} = {expr}" for c, expr in self.updates.items())
            if self.updates
            else "DO NOTHING"
        )
        returning = f" RETURNING {self.returning}" if self.returning else ""
        # Identifiers and expressions come from this module and the table metadata; values
        # are always bound parameters.
        return (
            f"INSERT INTO {self.table.schema}.{self.table.name} AS t ({columns}) "  # noqa: S608
            f"SELECT {select} FROM unnest({arrays}) AS u({columns}) "
            f"ON CONFLICT ({', '.join(self.keys)}) {conflict}{returning}"
        )

    async def execute(self, conn: AsyncConnection, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
        if not rows:
            return []
        params = {c: [row[c] for row in rows] for c in self.columns}
        result = await conn.execute(self.statement, params)
        return list(result.all()) if self.returning else []


def _sum_rows(
    keys: tuple[str, ...], columns: Iterable[str], sums: Mapping[Any, _Sums]
) -> list[dict[str, Any]]:
    """Rows of a rollup in key order (so that concurrent writers lock rows in the same order)."""
    value_columns = [c for c in columns if c not in keys]
    rows = []
    for key in sorted(sums):
        values = sums[key].values
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        row.update({c: values.get(c, 0) for c in value_columns})
        rows.append(row)
    return rows


_DAILY = BulkUpsert.additive(models.DailyStats, ("day",))
# xmax is 0 for a row this statement inserted: a user's first activity of that day.
_DAILY_USERS = BulkUpsert.additive(
    models.DailyUserStats, ("day", "user_id"), returning="day, (xmax = 0) AS inserted"
)
_DAILY_MODELS = BulkUpsert.additive(models.DailyModelStats, ("day", "model"))
_TTFT = BulkUpsert.additive(models.TtftHistogram, ("model", "bucket_ms"))
_API = BulkUpsert(
    _table(models.DailyApiUsage),
    (
        "day",
        "service",
        "route",
        "method",
        "status_code",
        "calls",
        "duration_ms_total",
        "duration_ms_max",
    ),
    ("day", "service", "route", "method", "status_code"),
    {
        "calls": "t.calls + excluded.calls",
        "duration_ms_total": "t.duration_ms_total + excluded.duration_ms_total",
        "duration_ms_max": "GREATEST(t.duration_ms_max, excluded.duration_ms_max)",
    },
)
_REPLIES = BulkUpsert(
    _table(models.ReplyMetrics),
    tuple(c.name for c in _table(models.ReplyMetrics).columns),
    ("message_id",),
    {},
    returning="message_id",
)
_ACTIVITIES = BulkUpsert(
    _table(models.UserActivity),
    (
        "event_id",
        "user_id",
        "username",
        "activity_type",
        "ip",
        "user_agent",
        "details",
        "source",
        "occurred_at",
    ),
    ("event_id",),
    {},
)
_NEWER_ROLES = (
    "(excluded.roles_set_at IS NOT NULL AND "
    "(t.roles_set_at IS NULL OR excluded.roles_set_at >= t.roles_set_at))"
)
_NEWER_ACTIVE = (
    "(excluded.is_active_set_at IS NOT NULL AND "
    "(t.is_active_set_at IS NULL OR excluded.is_active_set_at >= t.is_active_set_at))"
)
_USERS = BulkUpsert(
    _table(models.AnalyticsUser),
    tuple(c.name for c in _table(models.AnalyticsUser).columns),
    ("user_id",),
    {
        **{c: f"t.{c} + excluded.{c}" for c in (*_USER_COUNTERS, "cost_usd")},
        "username": "COALESCE(excluded.username, t.username)",
        "roles": f"CASE WHEN {_NEWER_ROLES} THEN excluded.roles ELSE t.roles END",
        "roles_set_at": f"CASE WHEN {_NEWER_ROLES} THEN excluded.roles_set_at "
        "ELSE t.roles_set_at END",
        "is_active": f"CASE WHEN {_NEWER_ACTIVE} THEN excluded.is_active ELSE t.is_active END",
        "is_active_set_at": f"CASE WHEN {_NEWER_ACTIVE} THEN excluded.is_active_set_at "
        "ELSE t.is_active_set_at END",
        "registered_at": "LEAST(t.registered_at, excluded.registered_at)",
        "deleted_at": "LEAST(t.deleted_at, excluded.deleted_at)",
        "first_seen_at": "LEAST(t.first_seen_at, excluded.first_seen_at)",
        "last_seen_at": "GREATEST(t.last_seen_at, excluded.last_seen_at)",
        "last_login_at": "GREATEST(t.last_login_at, excluded.last_login_at)",
    },
)
_CONVERSATIONS = BulkUpsert(
    _table(models.ConversationMetrics),
    tuple(c.name for c in _table(models.ConversationMetrics).columns),
    ("conversation_id",),
    {
        **{
            c: f"t.{c} + excluded.{c}"
            for c in (
                *_CONVERSATION_COUNTERS,
                "cost_usd",
                "reply_duration_ms_total",
                "ttft_ms_total",
            )
        },
        "user_id": "COALESCE(t.user_id, excluded.user_id)",
        "model": "COALESCE(t.model, excluded.model)",
        "assistant_id": "COALESCE(t.assistant_id, excluded.assistant_id)",
        "started_at": "LEAST(t.started_at, excluded.started_at)",
        "created_at": "LEAST(t.created_at, excluded.created_at)",
        "last_activity_at": "GREATEST(t.last_activity_at, excluded.last_activity_at)",
        "ended_at": "LEAST(t.ended_at, excluded.ended_at)",
        "deleted_at": "LEAST(t.deleted_at, excluded.deleted_at)",
    },
)
_COUNTERS = BulkUpsert(
    _table(models.SystemMetric),
    ("name", "value"),
    ("name",),
    {"value": "t.value + excluded.value", "updated_at": "now()"},
)
_GAUGES = BulkUpsert(
    _table(models.SystemMetric),
    ("name", "value"),
    ("name",),
    {"value": "excluded.value", "updated_at": "now()"},
)
_CLAIM = text(
    "INSERT INTO analytics.processed_events (event_id, event_type) "
    "SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:types AS text[])) "
    "ON CONFLICT DO NOTHING RETURNING event_id"
)


class EventIngestor:
    """Applies batches of events to the analytics tables (no framework types, no commit)."""

    def __init__(self, prices: PriceTable) -> None:
        self._prices = prices

    async def ingest(
        self,
        session: AsyncSession,
        events: Sequence[Incoming],
        extra_counters: Mapping[str, float] | None = None,
        gauges: Mapping[str, float] | None = None,
    ) -> IngestResult:
        conn = await session.connection()
        unique: dict[uuid.UUID, Incoming] = {}
        for event in events:
            unique.setdefault(event.event_id, event)
        new_ids = await self._claim(conn, list(unique.values()))
        effects = BatchEffects(self._prices)
        unknown: dict[str, int] = defaultdict(int)
        for event_id, event in unique.items():
            if event_id not in new_ids:
                continue
            if isinstance(event, UnknownEvent):
                unknown[event.type] += 1
            else:
                effects.add(event)
        await self._write_replies(conn, effects)
        for event_type, count in unknown.items():
            effects.counters["unknown_events"] += count
            effects.counters[f"unknown_events.{event_type[:96]}"] += count
        duplicates = len(events) - len(new_ids)
        effects.counters["events_ingested"] += len(new_ids)
        effects.counters["duplicates_skipped"] += duplicates
        for name, value in (extra_counters or {}).items():
            effects.counters[name] += value
        await self._write(conn, effects, gauges or {})
        return IngestResult(applied=len(new_ids), duplicates=duplicates, unknown_types=unknown)

    async def _claim(self, conn: AsyncConnection, events: list[Incoming]) -> set[uuid.UUID]:
        """Record the ids; the ones returned were never processed before."""
        if not events:
            return set()
        result = await conn.execute(
            _CLAIM,
            {"ids": [e.event_id for e in events], "types": [e.type[:64] for e in events]},
        )
        return {row[0] for row in result}

    async def _write_replies(self, conn: AsyncConnection, effects: BatchEffects) -> None:
        staged = sorted(effects.replies.values(), key=lambda r: r.row["message_id"])
        inserted = {row[0] for row in await _REPLIES.execute(conn, [r.row for r in staged])}
        for reply in staged:
            if reply.row["message_id"] in inserted:
                effects.add_reply(reply)

    async def _write(
        self, conn: AsyncConnection, effects: BatchEffects, gauges: Mapping[str, float]
    ) -> None:
        users = [effects.users[user_id].row(user_id) for user_id in sorted(effects.users)]
        for row in users:
            row["roles"] = None if row["roles"] is None else json.dumps(row["roles"])
        await _USERS.execute(conn, users)
        for activity in effects.activities:
            details = activity["details"]
            activity["details"] = None if details is None else json.dumps(details)
        await _ACTIVITIES.execute(conn, effects.activities)
        await _CONVERSATIONS.execute(
            conn,
            [effects.conversations[c].row(c) for c in sorted(effects.conversations)],
        )
        newly_active = await _DAILY_USERS.execute(
            conn, _sum_rows(_DAILY_USERS.keys, _DAILY_USERS.columns, effects.daily_users)
        )
        for day, inserted in newly_active:
            if inserted:
                effects.daily[day].add("active_users", 1)
        await _DAILY.execute(conn, _sum_rows(_DAILY.keys, _DAILY.columns, effects.daily))
        await _DAILY_MODELS.execute(
            conn, _sum_rows(_DAILY_MODELS.keys, _DAILY_MODELS.columns, effects.daily_models)
        )
        await _TTFT.execute(
            conn,
            [
                {"model": model, "bucket_ms": bucket, "replies": count}
                for (model, bucket), count in sorted(effects.ttft.items())
            ],
        )
        await _API.execute(
            conn,
            [
                {
                    "day": day,
                    "service": service,
                    "route": route,
                    "method": method,
                    "status_code": status,
                    "calls": int(calls),
                    "duration_ms_total": total,
                    "duration_ms_max": longest,
                }
                for (day, service, route, method, status), (calls, total, longest) in sorted(
                    effects.api.items()
                )
            ],
        )
        await write_system_metrics(conn, effects.counters, gauges)


async def write_system_metrics(
    conn: AsyncConnection, counters: Mapping[str, float], gauges: Mapping[str, float]
) -> None:
    """Counters add up; gauges are overwritten with the latest reading."""
    # A zero counter changes nothing; a zero gauge is a reading worth keeping.
    await _COUNTERS.execute(
        conn,
        [{"name": n[:128], "value": float(v)} for n, v in sorted(counters.items()) if v],
    )
    await _GAUGES.execute(
        conn, [{"name": n[:128], "value": float(v)} for n, v in sorted(gauges.items())]
    )

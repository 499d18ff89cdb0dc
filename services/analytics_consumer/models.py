"""Tables of the `analytics` schema: raw facts, incrementally maintained rollups, consumer state.

Dashboard reads touch the rollups (`daily_*`, `ttft_histogram`, per-user and per-conversation
counters), never the raw history, so their cost does not grow with the number of replies.
Every counter is maintained by additive upserts in the batch that records the event's id in
`processed_events`, so a redelivered event can never be counted twice.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    Identity,
    Index,
    Integer,
    Numeric,
    String,
    Uuid,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import schema_metadata


class Base(DeclarativeBase):
    """Tables of the `analytics` schema."""

    metadata = schema_metadata("analytics")


ID_LENGTH = 64
NAME_LENGTH = 150
MODEL_LENGTH = 100
USER_AGENT_LENGTH = 512
ROUTE_LENGTH = 300
UNKNOWN_MODEL = "unknown"
"""Rollup key for replies whose event names no model (a failure before the model was chosen)."""
ALL_MODELS = "*"
"""`ttft_histogram` rows under this model count every model, so the summary reads one histogram."""

Money = Numeric(20, 8)


class ProcessedEvent(Base):
    """Tracking record: an event id here has had all its effects committed."""

    __tablename__ = "processed_events"

    event_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    event_type: Mapped[str] = mapped_column(String(64))
    processed_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )


class AnalyticsUser(Base):
    """A user as events describe them, with lifetime counters for rankings."""

    __tablename__ = "users"

    user_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    username: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    roles: Mapped[list[str] | None] = mapped_column(ARRAY(String(32)))
    is_active: Mapped[bool] = mapped_column(Boolean, server_default="true")
    registered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When `roles` / `is_active` were last set: out-of-order updates never overwrite newer ones.
    roles_set_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    is_active_set_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    first_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    logins: Mapped[int] = mapped_column(Integer, server_default="0")
    conversations: Mapped[int] = mapped_column(Integer, server_default="0")
    user_messages: Mapped[int] = mapped_column(Integer, server_default="0")
    replies: Mapped[int] = mapped_column(Integer, server_default="0")
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    completion_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    cost_usd: Mapped[Decimal] = mapped_column(Money, server_default="0")

    __table_args__ = (
        Index("ix_users_user_messages", "user_messages"),
        Index("ix_users_total_tokens", text("(prompt_tokens + completion_tokens)")),
    )


class UserActivity(Base):
    """One login, logout, failed login, registration, ... (or an admin's manual entry)."""

    __tablename__ = "user_activities"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    event_id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True)
    user_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    username: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    activity_type: Mapped[str] = mapped_column(String(32))
    ip: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(USER_AGENT_LENGTH))
    details: Mapped[dict[str, object] | None] = mapped_column(JSONB)
    source: Mapped[str] = mapped_column(String(16), server_default="event")
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_user_activities_occurred_at", "occurred_at"),
        Index("ix_user_activities_user_occurred", "user_id", "occurred_at"),
        Index("ix_user_activities_type_occurred", "activity_type", "occurred_at"),
    )


class ConversationMetrics(Base):
    """Messages, tokens and response times of one conversation."""

    __tablename__ = "conversations"

    conversation_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    user_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    model: Mapped[str | None] = mapped_column(String(MODEL_LENGTH))
    assistant_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    # The earliest event seen for it: its creation time once `conversation.created` arrived,
    # a close bound before that (events may arrive out of order).
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_activity_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    user_messages: Mapped[int] = mapped_column(Integer, server_default="0")
    replies_completed: Mapped[int] = mapped_column(Integer, server_default="0")
    replies_failed: Mapped[int] = mapped_column(Integer, server_default="0")
    replies_cancelled: Mapped[int] = mapped_column(Integer, server_default="0")
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    completion_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    cost_usd: Mapped[Decimal] = mapped_column(Money, server_default="0")
    reply_duration_ms_total: Mapped[float] = mapped_column(Float, server_default="0")
    ttft_ms_total: Mapped[float] = mapped_column(Float, server_default="0")

    __table_args__ = (
        Index("ix_conversations_started_at", "started_at"),
        Index("ix_conversations_user_started", "user_id", "started_at"),
    )


class ReplyMetrics(Base):
    """One assistant reply's outcome; the first terminal event for a message id wins."""

    __tablename__ = "replies"

    message_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    event_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    conversation_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    user_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    reply_to: Mapped[str] = mapped_column(String(ID_LENGTH))
    model: Mapped[str] = mapped_column(String(MODEL_LENGTH))
    status: Mapped[str] = mapped_column(String(16))
    prompt_tokens: Mapped[int] = mapped_column(BigInteger)
    completion_tokens: Mapped[int] = mapped_column(BigInteger)
    usage_estimated: Mapped[bool] = mapped_column(Boolean, server_default="false")
    """The model reported no usage: the worker estimated the token counts from the text."""
    api_key_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    """The API key of a `/v1` request."""
    cost_usd: Mapped[Decimal] = mapped_column(Money)
    price_known: Mapped[bool] = mapped_column(Boolean)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    duration_ms: Mapped[float] = mapped_column(Float)
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    error_code: Mapped[str | None] = mapped_column(String(64))
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_replies_occurred_at", "occurred_at"),
        Index("ix_replies_model_occurred", "model", "occurred_at"),
    )


class DailyStats(Base):
    """Everything the dashboard totals, per UTC day."""

    __tablename__ = "daily_stats"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    new_users: Mapped[int] = mapped_column(Integer, server_default="0")
    active_users: Mapped[int] = mapped_column(Integer, server_default="0")
    logins: Mapped[int] = mapped_column(Integer, server_default="0")
    failed_logins: Mapped[int] = mapped_column(Integer, server_default="0")
    logouts: Mapped[int] = mapped_column(Integer, server_default="0")
    conversations_created: Mapped[int] = mapped_column(Integer, server_default="0")
    user_messages: Mapped[int] = mapped_column(BigInteger, server_default="0")
    replies_completed: Mapped[int] = mapped_column(BigInteger, server_default="0")
    replies_failed: Mapped[int] = mapped_column(BigInteger, server_default="0")
    replies_cancelled: Mapped[int] = mapped_column(BigInteger, server_default="0")
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    completion_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    estimated_replies: Mapped[int] = mapped_column(BigInteger, server_default="0")
    estimated_prompt_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    estimated_completion_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    cost_usd: Mapped[Decimal] = mapped_column(Money, server_default="0")
    reply_duration_ms_total: Mapped[float] = mapped_column(Float, server_default="0")
    ttft_ms_total: Mapped[float] = mapped_column(Float, server_default="0")
    api_calls: Mapped[int] = mapped_column(BigInteger, server_default="0")
    api_server_errors: Mapped[int] = mapped_column(BigInteger, server_default="0")
    api_client_errors: Mapped[int] = mapped_column(BigInteger, server_default="0")
    api_duration_ms_total: Mapped[float] = mapped_column(Float, server_default="0")


class DailyUserStats(Base):
    """Per UTC day and user; a row exists iff the user was active that day."""

    __tablename__ = "daily_user_stats"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    user_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    logins: Mapped[int] = mapped_column(Integer, server_default="0")
    conversations_created: Mapped[int] = mapped_column(Integer, server_default="0")
    user_messages: Mapped[int] = mapped_column(Integer, server_default="0")
    replies: Mapped[int] = mapped_column(Integer, server_default="0")
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    completion_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    cost_usd: Mapped[Decimal] = mapped_column(Money, server_default="0")

    __table_args__ = (Index("ix_daily_user_stats_user_day", "user_id", "day"),)


class DailyModelStats(Base):
    """Per UTC day and model."""

    __tablename__ = "daily_model_stats"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    model: Mapped[str] = mapped_column(String(MODEL_LENGTH), primary_key=True)
    replies_completed: Mapped[int] = mapped_column(BigInteger, server_default="0")
    replies_failed: Mapped[int] = mapped_column(BigInteger, server_default="0")
    replies_cancelled: Mapped[int] = mapped_column(BigInteger, server_default="0")
    unpriced_replies: Mapped[int] = mapped_column(BigInteger, server_default="0")
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    completion_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    estimated_replies: Mapped[int] = mapped_column(BigInteger, server_default="0")
    estimated_prompt_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    estimated_completion_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    cost_usd: Mapped[Decimal] = mapped_column(Money, server_default="0")
    reply_duration_ms_total: Mapped[float] = mapped_column(Float, server_default="0")
    ttft_ms_total: Mapped[float] = mapped_column(Float, server_default="0")


class ApiKey(Base):
    """An API key as its events describe it: whose, its name and prefix, when it was revoked."""

    __tablename__ = "api_keys"

    key_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    user_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    name: Mapped[str | None] = mapped_column(String(NAME_LENGTH))
    prefix: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_api_keys_user", "user_id"),)


class DailyApiKeyStats(Base):
    """Replies to `/v1` requests per UTC day and API key (a key has one owner, `user_id`)."""

    __tablename__ = "daily_api_key_stats"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    api_key_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    replies_completed: Mapped[int] = mapped_column(BigInteger, server_default="0")
    replies_failed: Mapped[int] = mapped_column(BigInteger, server_default="0")
    replies_cancelled: Mapped[int] = mapped_column(BigInteger, server_default="0")
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    completion_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    estimated_replies: Mapped[int] = mapped_column(BigInteger, server_default="0")
    estimated_prompt_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    estimated_completion_tokens: Mapped[int] = mapped_column(BigInteger, server_default="0")
    cost_usd: Mapped[Decimal] = mapped_column(Money, server_default="0")

    __table_args__ = (Index("ix_daily_api_key_stats_user_day", "user_id", "day"),)


class TtftHistogram(Base):
    """Completed replies per model and time-to-first-token bucket, for lifetime percentiles."""

    __tablename__ = "ttft_histogram"

    model: Mapped[str] = mapped_column(String(MODEL_LENGTH), primary_key=True)
    bucket_ms: Mapped[int] = mapped_column(Integer, primary_key=True)
    replies: Mapped[int] = mapped_column(BigInteger, server_default="0")


class DailyApiUsage(Base):
    """HTTP requests per UTC day, service, route template, method and status."""

    __tablename__ = "daily_api_usage"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    service: Mapped[str] = mapped_column(String(64), primary_key=True)
    route: Mapped[str] = mapped_column(String(ROUTE_LENGTH), primary_key=True)
    method: Mapped[str] = mapped_column(String(16), primary_key=True)
    status_code: Mapped[int] = mapped_column(Integer, primary_key=True)
    calls: Mapped[int] = mapped_column(BigInteger, server_default="0")
    duration_ms_total: Mapped[float] = mapped_column(Float, server_default="0")
    duration_ms_max: Mapped[float] = mapped_column(Float, server_default="0")


class SystemMetric(Base):
    """Consumer health: counters (events ingested, unknown types, dead-lettered) and gauges."""

    __tablename__ = "system_metrics"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[float] = mapped_column(Float, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

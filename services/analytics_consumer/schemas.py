"""Request and response bodies of the dashboard API."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from pydantic import BaseModel, Field


class EstimatedUsage(BaseModel):
    """How much of a row's token counts was estimated (the model's stream carried no usage)."""

    estimated_replies: int = Field(
        default=0, description="Replies whose model reported no usage (token counts estimated)."
    )
    estimated_prompt_tokens: int = Field(
        default=0, description="The part of prompt_tokens that was estimated, not reported."
    )
    estimated_completion_tokens: int = Field(
        default=0, description="The part of completion_tokens that was estimated, not reported."
    )


class Summary(EstimatedUsage):
    total_users: int = Field(
        description="Accounts known from events and not deleted (anonymous owners excluded)."
    )
    anonymous_users: int = Field(
        default=0, description="Anonymous sockets that started a conversation (one per socket)."
    )
    active_users_today: int = Field(description="Users with any own activity today (UTC).")
    total_conversations: int
    total_messages: int = Field(
        description="User messages plus stored assistant replies (completed or cancelled)."
    )
    user_messages: int
    assistant_messages: int
    replies_completed: int
    replies_failed: int
    replies_cancelled: int
    total_tokens: int
    prompt_tokens: int
    completion_tokens: int
    total_cost_usd: float
    total_api_calls: int
    avg_response_time: float | None = Field(
        description="Mean duration of completed replies, in milliseconds."
    )
    avg_api_latency_ms: float | None
    error_rate: float = Field(description="HTTP requests answered with 5xx / all HTTP requests.")
    reply_failure_rate: float = Field(description="Failed replies / all finished replies.")
    avg_ttft_ms: float | None
    ttft_p50_ms: float | None = Field(description="Nearest-rank, over completed replies.")
    ttft_p95_ms: float | None
    logins: int
    failed_logins: int
    system: dict[str, float] = Field(
        description="Consumer health: events ingested, duplicates, unknown types, dead-lettered, "
        "consumer lag, queue depths."
    )


class Activity(BaseModel):
    id: int
    user_id: str | None
    username: str | None
    activity_type: str
    ip: str | None
    user_agent: str | None
    details: dict[str, Any] | None
    source: str
    occurred_at: datetime


class TrackActivity(BaseModel):
    """A manual entry by an admin (services report through events, not this endpoint)."""

    activity_type: str = Field(min_length=1, max_length=32, pattern=r"^[a-z][a-z0-9_.-]*$")
    user_id: str | None = Field(default=None, max_length=64)
    username: str | None = Field(default=None, max_length=150)
    ip: str | None = Field(default=None, max_length=64)
    user_agent: str | None = Field(default=None, max_length=512)
    details: dict[str, Any] | None = None
    occurred_at: datetime | None = None


class TopUser(BaseModel):
    user_id: str
    username: str | None
    user_messages: int
    replies: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd: float


class UserRow(BaseModel):
    user_id: str
    username: str | None
    roles: list[str]
    is_active: bool
    registered_at: datetime | None
    first_seen_at: datetime
    last_seen_at: datetime
    last_login_at: datetime | None
    logins: int
    conversations: int
    user_messages: int
    replies: int
    total_tokens: int
    cost_usd: float


class ConversationRow(BaseModel):
    conversation_id: str
    user_id: str | None
    model: str | None
    started_at: datetime
    last_activity_at: datetime
    ended_at: datetime | None
    deleted_at: datetime | None
    user_messages: int
    replies_completed: int
    replies_failed: int
    replies_cancelled: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd: float
    avg_response_time_ms: float | None
    avg_ttft_ms: float | None


class ApiUsageRow(BaseModel):
    service: str
    route: str
    method: str
    calls: int
    server_errors: int
    client_errors: int
    error_rate: float
    avg_latency_ms: float
    max_latency_ms: float


class DailyRow(EstimatedUsage):
    date: date
    new_users: int
    active_users: int
    logins: int
    failed_logins: int
    conversations: int
    user_messages: int
    replies_completed: int
    replies_failed: int
    replies_cancelled: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd: float
    avg_response_time_ms: float | None
    api_calls: int
    api_server_errors: int


class TtftDay(BaseModel):
    date: date
    replies: int = Field(description="Completed replies with a time to first token.")
    ttft_p50_ms: float | None = Field(description="Nearest-rank, over that day's replies.")
    ttft_p95_ms: float | None


class ModelRow(EstimatedUsage):
    model: str
    replies_completed: int
    replies_failed: int
    replies_cancelled: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd: float
    price_known: bool
    unpriced_replies: int
    input_usd_per_million: float | None
    output_usd_per_million: float | None
    avg_duration_ms: float | None
    avg_ttft_ms: float | None
    ttft_p50_ms: float | None = Field(description="Lifetime, nearest-rank.")
    ttft_p95_ms: float | None = Field(description="Lifetime, nearest-rank.")


class ApiKeyUsageRow(EstimatedUsage):
    """Replies to `/v1` requests made with one API key over the date range."""

    api_key_id: str
    user_id: str | None
    username: str | None
    name: str | None = Field(description="The key's name (null if its creation was not seen).")
    prefix: str | None
    created_at: datetime | None
    revoked_at: datetime | None
    requests: int = Field(description="Requests answered: replies completed, failed or cancelled.")
    replies_completed: int
    replies_failed: int
    replies_cancelled: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd: float


class AnalyticsHealth(BaseModel):
    status: str
    consumer_connected: bool

"""metrics tables: processed events, users, activities, conversations, replies, rollups

Revision ID: analytics_0002
Revises: analytics_0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "analytics_0002"
down_revision = "analytics_0001"
branch_labels = None
depends_on = None

S = "analytics"
ID = 64
MONEY = sa.Numeric(20, 8)


def _zero(name: str, type_: sa.types.TypeEngine = sa.Integer()) -> sa.Column:
    return sa.Column(name, type_, server_default="0", nullable=False)


def _ts(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _reply_totals() -> list[sa.Column]:
    return [
        _zero("prompt_tokens", sa.BigInteger()),
        _zero("completion_tokens", sa.BigInteger()),
        _zero("cost_usd", MONEY),
        _zero("reply_duration_ms_total", sa.Float()),
        _zero("ttft_ms_total", sa.Float()),
    ]


def upgrade() -> None:
    op.create_table(
        "processed_events",
        sa.Column("event_id", sa.Uuid(), primary_key=True),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column(
            "processed_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        schema=S,
    )
    op.create_table(
        "users",
        sa.Column("user_id", sa.String(ID), primary_key=True),
        sa.Column("username", sa.String(150)),
        sa.Column("roles", postgresql.ARRAY(sa.String(32))),
        sa.Column("is_active", sa.Boolean(), server_default="true", nullable=False),
        _ts("registered_at"),
        _ts("deleted_at"),
        _ts("roles_set_at"),
        _ts("is_active_set_at"),
        _ts("first_seen_at", nullable=False),
        _ts("last_seen_at", nullable=False),
        _ts("last_login_at"),
        _zero("logins"),
        _zero("conversations"),
        _zero("user_messages"),
        _zero("replies"),
        _zero("prompt_tokens", sa.BigInteger()),
        _zero("completion_tokens", sa.BigInteger()),
        _zero("cost_usd", MONEY),
        schema=S,
    )
    op.create_index("ix_users_user_messages", "users", ["user_messages"], schema=S)
    op.create_index(
        "ix_users_total_tokens",
        "users",
        [sa.text("(prompt_tokens + completion_tokens)")],
        schema=S,
    )
    op.create_table(
        "user_activities",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("event_id", sa.Uuid(), nullable=False, unique=True),
        sa.Column("user_id", sa.String(ID)),
        sa.Column("username", sa.String(150)),
        sa.Column("activity_type", sa.String(32), nullable=False),
        sa.Column("ip", sa.String(64)),
        sa.Column("user_agent", sa.String(512)),
        sa.Column("details", postgresql.JSONB()),
        sa.Column("source", sa.String(16), server_default="event", nullable=False),
        _ts("occurred_at", nullable=False),
        schema=S,
    )
    op.create_index("ix_user_activities_occurred_at", "user_activities", ["occurred_at"], schema=S)
    op.create_index(
        "ix_user_activities_user_occurred", "user_activities", ["user_id", "occurred_at"], schema=S
    )
    op.create_index(
        "ix_user_activities_type_occurred",
        "user_activities",
        ["activity_type", "occurred_at"],
        schema=S,
    )
    op.create_table(
        "conversations",
        sa.Column("conversation_id", sa.String(ID), primary_key=True),
        sa.Column("user_id", sa.String(ID)),
        sa.Column("model", sa.String(100)),
        sa.Column("assistant_id", sa.String(ID)),
        _ts("started_at", nullable=False),
        _ts("created_at"),
        _ts("last_activity_at", nullable=False),
        _ts("ended_at"),
        _ts("deleted_at"),
        _zero("user_messages"),
        _zero("replies_completed"),
        _zero("replies_failed"),
        _zero("replies_cancelled"),
        *_reply_totals(),
        schema=S,
    )
    op.create_index("ix_conversations_started_at", "conversations", ["started_at"], schema=S)
    op.create_index(
        "ix_conversations_user_started", "conversations", ["user_id", "started_at"], schema=S
    )
    op.create_table(
        "replies",
        sa.Column("message_id", sa.String(ID), primary_key=True),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("conversation_id", sa.String(ID), nullable=False),
        sa.Column("user_id", sa.String(ID)),
        sa.Column("reply_to", sa.String(ID), nullable=False),
        sa.Column("model", sa.String(100), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("cost_usd", MONEY, nullable=False),
        sa.Column("price_known", sa.Boolean(), nullable=False),
        sa.Column("ttft_ms", sa.Float()),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("finish_reason", sa.String(32)),
        sa.Column("error_code", sa.String(64)),
        _ts("occurred_at", nullable=False),
        schema=S,
    )
    op.create_index("ix_replies_occurred_at", "replies", ["occurred_at"], schema=S)
    op.create_index("ix_replies_model_occurred", "replies", ["model", "occurred_at"], schema=S)
    op.create_table(
        "daily_stats",
        sa.Column("day", sa.Date(), primary_key=True),
        _zero("new_users"),
        _zero("active_users"),
        _zero("logins"),
        _zero("failed_logins"),
        _zero("logouts"),
        _zero("conversations_created"),
        _zero("user_messages", sa.BigInteger()),
        _zero("replies_completed", sa.BigInteger()),
        _zero("replies_failed", sa.BigInteger()),
        _zero("replies_cancelled", sa.BigInteger()),
        *_reply_totals(),
        _zero("api_calls", sa.BigInteger()),
        _zero("api_server_errors", sa.BigInteger()),
        _zero("api_client_errors", sa.BigInteger()),
        _zero("api_duration_ms_total", sa.Float()),
        schema=S,
    )
    op.create_table(
        "daily_user_stats",
        sa.Column("day", sa.Date(), primary_key=True),
        sa.Column("user_id", sa.String(ID), primary_key=True),
        _zero("logins"),
        _zero("conversations_created"),
        _zero("user_messages"),
        _zero("replies"),
        _zero("prompt_tokens", sa.BigInteger()),
        _zero("completion_tokens", sa.BigInteger()),
        _zero("cost_usd", MONEY),
        schema=S,
    )
    op.create_index(
        "ix_daily_user_stats_user_day", "daily_user_stats", ["user_id", "day"], schema=S
    )
    op.create_table(
        "daily_model_stats",
        sa.Column("day", sa.Date(), primary_key=True),
        sa.Column("model", sa.String(100), primary_key=True),
        _zero("replies_completed", sa.BigInteger()),
        _zero("replies_failed", sa.BigInteger()),
        _zero("replies_cancelled", sa.BigInteger()),
        _zero("unpriced_replies", sa.BigInteger()),
        *_reply_totals(),
        schema=S,
    )
    op.create_table(
        "ttft_histogram",
        sa.Column("model", sa.String(100), primary_key=True),
        sa.Column("bucket_ms", sa.Integer(), primary_key=True),
        _zero("replies", sa.BigInteger()),
        schema=S,
    )
    op.create_table(
        "daily_api_usage",
        sa.Column("day", sa.Date(), primary_key=True),
        sa.Column("service", sa.String(64), primary_key=True),
        sa.Column("route", sa.String(300), primary_key=True),
        sa.Column("method", sa.String(16), primary_key=True),
        sa.Column("status_code", sa.Integer(), primary_key=True),
        _zero("calls", sa.BigInteger()),
        _zero("duration_ms_total", sa.Float()),
        _zero("duration_ms_max", sa.Float()),
        schema=S,
    )
    op.create_table(
        "system_metrics",
        sa.Column("name", sa.String(128), primary_key=True),
        _zero("value", sa.Float()),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        schema=S,
    )


def downgrade() -> None:
    for table in (
        "system_metrics",
        "daily_api_usage",
        "ttft_histogram",
        "daily_model_stats",
        "daily_user_stats",
        "daily_stats",
        "replies",
        "conversations",
        "user_activities",
        "users",
        "processed_events",
    ):
        op.drop_table(table, schema=S)

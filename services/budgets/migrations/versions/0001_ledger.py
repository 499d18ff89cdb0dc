"""budgets schema: limits, daily usage, reservations, rate windows

Revision ID: budgets_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "budgets_0001"
down_revision = None
branch_labels = None
depends_on = None

S = "budgets"


def upgrade() -> None:
    op.create_table(
        "limits",
        sa.Column("user_id", sa.String(16), primary_key=True),
        sa.Column("requests_per_minute", sa.Integer()),
        sa.Column("tokens_per_day", sa.BigInteger()),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        schema=S,
    )
    op.create_table(
        "daily_usage",
        sa.Column("user_id", sa.String(16), primary_key=True),
        sa.Column("day", sa.Date(), primary_key=True),
        sa.Column("used_tokens", sa.BigInteger(), nullable=False),
        sa.Column("reserved_tokens", sa.BigInteger(), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.CheckConstraint("reserved_tokens >= 0", name="ck_daily_usage_reserved"),
        schema=S,
    )
    op.create_table(
        "reservations",
        sa.Column("message_id", sa.String(10), primary_key=True),
        sa.Column("user_id", sa.String(16), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        schema=S,
    )
    op.create_index("ix_reservations_created_at", "reservations", ["created_at"], schema=S)
    op.create_table(
        "rate_windows",
        sa.Column("user_id", sa.String(16), primary_key=True),
        sa.Column("window_start", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("count", sa.Integer(), nullable=False),
        schema=S,
    )


def downgrade() -> None:
    op.drop_table("rate_windows", schema=S)
    op.drop_table("reservations", schema=S)
    op.drop_table("daily_usage", schema=S)
    op.drop_table("limits", schema=S)

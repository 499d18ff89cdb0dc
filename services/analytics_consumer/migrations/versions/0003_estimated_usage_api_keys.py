"""estimated usage counted apart; API keys and their usage per day

Revision ID: analytics_0003
Revises: analytics_0002
"""

import sqlalchemy as sa
from alembic import op

revision = "analytics_0003"
down_revision = "analytics_0002"
branch_labels = None
depends_on = None

S = "analytics"
ID = 64
MONEY = sa.Numeric(20, 8)
ESTIMATED = ("estimated_replies", "estimated_prompt_tokens", "estimated_completion_tokens")


def _zero(name: str, type_: sa.types.TypeEngine = sa.BigInteger()) -> sa.Column:
    return sa.Column(name, type_, server_default="0", nullable=False)


def upgrade() -> None:
    op.add_column(
        "replies",
        sa.Column("usage_estimated", sa.Boolean(), server_default="false", nullable=False),
        schema=S,
    )
    op.add_column("replies", sa.Column("api_key_id", sa.String(ID)), schema=S)
    for table in ("daily_stats", "daily_model_stats"):
        for column in ESTIMATED:
            op.add_column(table, _zero(column), schema=S)
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(ID), primary_key=True),
        sa.Column("user_id", sa.String(ID)),
        sa.Column("name", sa.String(150)),
        sa.Column("prefix", sa.String(32)),
        sa.Column("created_at", sa.DateTime(timezone=True)),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        schema=S,
    )
    op.create_index("ix_api_keys_user", "api_keys", ["user_id"], schema=S)
    op.create_table(
        "daily_api_key_stats",
        sa.Column("day", sa.Date(), primary_key=True),
        sa.Column("api_key_id", sa.String(ID), primary_key=True),
        sa.Column("user_id", sa.String(ID), primary_key=True),
        _zero("replies_completed"),
        _zero("replies_failed"),
        _zero("replies_cancelled"),
        _zero("prompt_tokens"),
        _zero("completion_tokens"),
        *(_zero(column) for column in ESTIMATED),
        _zero("cost_usd", MONEY),
        schema=S,
    )
    op.create_index(
        "ix_daily_api_key_stats_user_day", "daily_api_key_stats", ["user_id", "day"], schema=S
    )


def downgrade() -> None:
    op.drop_table("daily_api_key_stats", schema=S)
    op.drop_table("api_keys", schema=S)
    for table in ("daily_stats", "daily_model_stats"):
        for column in ESTIMATED:
            op.drop_column(table, column, schema=S)
    op.drop_column("replies", "api_key_id", schema=S)
    op.drop_column("replies", "usage_estimated", schema=S)

"""The Alembic steps that create and drop a schema's transactional `outbox` table.

Every schema that publishes events owns one such table (`shared.outbox.outbox_table` is its
model); its first migration calls these instead of spelling the columns out again.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


def create_outbox_table(schema: str) -> None:
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("routing_key", sa.String(64), nullable=False),
        sa.Column("correlation_id", sa.String(64), nullable=True),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("trace_context", sa.String(128), nullable=True),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.UniqueConstraint("event_id", name="uq_outbox_event_id"),
        schema=schema,
    )
    op.create_index("ix_outbox_created_at", "outbox", ["created_at"], schema=schema)


def add_trace_context_column(schema: str) -> None:
    """For an outbox created before rows kept their `traceparent`; a no-op on a table that
    `create_outbox_table` made with it."""
    op.execute(f'ALTER TABLE "{schema}".outbox ADD COLUMN IF NOT EXISTS trace_context VARCHAR(128)')


def drop_trace_context_column(schema: str) -> None:
    op.execute(f'ALTER TABLE "{schema}".outbox DROP COLUMN IF EXISTS trace_context')


def drop_outbox_table(schema: str) -> None:
    op.drop_table("outbox", schema=schema)

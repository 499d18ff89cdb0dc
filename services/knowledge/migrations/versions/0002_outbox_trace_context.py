"""knowledge's outbox rows carry the trace context too (shared/outbox.py reads the column)

Revision ID: knowledge_0002
Revises: knowledge_0001
"""

from shared.outbox_migration import add_trace_context_column, drop_trace_context_column

revision = "knowledge_0002"
down_revision = "knowledge_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    add_trace_context_column("knowledge")


def downgrade() -> None:
    drop_trace_context_column("knowledge")

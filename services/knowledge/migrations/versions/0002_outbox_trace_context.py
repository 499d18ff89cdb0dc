"""outbox rows carry the trace context of the request that wrote them

Revision ID: knowledge_0002
Revises: knowledge_0001
"""

from shared.outbox_migration import add_trace_context_column, drop_trace_context_column

revision = "knowledge_0002"
down_revision = "knowledge_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A no-op where knowledge_0001 already created the column; for databases migrated before.
    add_trace_context_column("knowledge")


def downgrade() -> None:
    drop_trace_context_column("knowledge")

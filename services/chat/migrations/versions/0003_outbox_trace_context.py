"""outbox rows carry the trace context of the request that wrote them

Revision ID: chat_0003
Revises: chat_0002
"""

from shared.outbox_migration import add_trace_context_column, drop_trace_context_column

revision = "chat_0003"
down_revision = "chat_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    add_trace_context_column("chat")


def downgrade() -> None:
    drop_trace_context_column("chat")

"""outbox rows carry the trace context of the request that wrote them

Revision ID: auth_0003
Revises: auth_0002
"""

from shared.outbox_migration import add_trace_context_column, drop_trace_context_column

revision = "auth_0003"
down_revision = "auth_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    add_trace_context_column("auth")


def downgrade() -> None:
    drop_trace_context_column("auth")

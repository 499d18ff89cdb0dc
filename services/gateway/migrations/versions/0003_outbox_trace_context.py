"""outbox rows carry the trace context of the request that wrote them

Revision ID: chat_0003
Revises: chat_0002
"""

import sqlalchemy as sa
from alembic import op

revision = "chat_0003"
down_revision = "chat_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "outbox", sa.Column("trace_context", sa.String(128), nullable=True), schema="chat"
    )


def downgrade() -> None:
    op.drop_column("outbox", "trace_context", schema="chat")

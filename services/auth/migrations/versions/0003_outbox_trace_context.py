"""outbox rows carry the trace context of the request that wrote them

Revision ID: auth_0003
Revises: auth_0002
"""

import sqlalchemy as sa
from alembic import op

revision = "auth_0003"
down_revision = "auth_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "outbox", sa.Column("trace_context", sa.String(128), nullable=True), schema="auth"
    )


def downgrade() -> None:
    op.drop_column("outbox", "trace_context", schema="auth")

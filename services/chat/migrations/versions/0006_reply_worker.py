"""replies name the worker generating their current attempt

Revision ID: chat_0006
Revises: chat_0005
"""

import sqlalchemy as sa
from alembic import op

revision = "chat_0006"
down_revision = "chat_0005"
branch_labels = None
depends_on = None

S = "chat"


def upgrade() -> None:
    op.add_column("messages", sa.Column("worker_id", sa.String(100)), schema=S)


def downgrade() -> None:
    op.drop_column("messages", "worker_id", schema=S)

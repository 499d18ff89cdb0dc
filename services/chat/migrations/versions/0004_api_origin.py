"""conversations made by the OpenAI-compatible API: origin and key

Revision ID: chat_0004
Revises: chat_0003
"""

import sqlalchemy as sa
from alembic import op

revision = "chat_0004"
down_revision = "chat_0003"
branch_labels = None
depends_on = None

S = "chat"


def upgrade() -> None:
    op.add_column(
        "conversations",
        sa.Column("origin", sa.String(8), server_default="chat", nullable=False),
        schema=S,
    )
    op.add_column("conversations", sa.Column("api_key_id", sa.String(16)), schema=S)


def downgrade() -> None:
    op.drop_column("conversations", "api_key_id", schema=S)
    op.drop_column("conversations", "origin", schema=S)

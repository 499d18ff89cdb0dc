"""replies say whether their usage was estimated; conversations carry a reply's max_tokens

Revision ID: chat_0005
Revises: chat_0004
"""

import sqlalchemy as sa
from alembic import op

revision = "chat_0005"
down_revision = "chat_0004"
branch_labels = None
depends_on = None

S = "chat"


def upgrade() -> None:
    op.add_column(
        "messages",
        sa.Column("usage_estimated", sa.Boolean(), server_default="false", nullable=False),
        schema=S,
    )
    op.add_column("conversations", sa.Column("max_tokens", sa.Integer()), schema=S)


def downgrade() -> None:
    op.drop_column("conversations", "max_tokens", schema=S)
    op.drop_column("messages", "usage_estimated", schema=S)

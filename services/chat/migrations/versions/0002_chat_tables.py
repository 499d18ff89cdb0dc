"""assistants, conversations, messages

Revision ID: chat_0002
Revises: chat_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "chat_0002"
down_revision = "chat_0001"
branch_labels = None
depends_on = None

S = "chat"


def _timestamps() -> list[sa.Column]:
    return [
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
    ]


def upgrade() -> None:
    op.create_table(
        "assistants",
        sa.Column("id", sa.String(12), primary_key=True),
        sa.Column("owner_id", sa.String(16), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("system_prompt", sa.Text(), nullable=False),
        sa.Column("model", sa.String(100)),
        sa.Column("temperature", sa.Float()),
        *_timestamps(),
        schema=S,
    )
    op.create_index("ix_assistants_owner_id", "assistants", ["owner_id"], schema=S)
    op.create_table(
        "conversations",
        sa.Column("id", sa.String(12), primary_key=True),
        sa.Column("owner_id", sa.String(16), nullable=False),
        sa.Column("title", sa.String(200), nullable=False),
        sa.Column(
            "assistant_id", sa.String(12), sa.ForeignKey(f"{S}.assistants.id", ondelete="SET NULL")
        ),
        sa.Column("system_prompt", sa.Text()),
        sa.Column("model", sa.String(100)),
        sa.Column("temperature", sa.Float()),
        sa.Column("status", sa.String(16), nullable=False),
        *_timestamps(),
        schema=S,
    )
    op.create_index(
        "ix_conversations_owner_updated", "conversations", ["owner_id", "updated_at"], schema=S
    )
    op.create_table(
        "messages",
        sa.Column("id", sa.String(10), primary_key=True),
        sa.Column(
            "conversation_id",
            sa.String(12),
            sa.ForeignKey(f"{S}.conversations.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reply_to", sa.String(10), sa.ForeignKey(f"{S}.messages.id", ondelete="CASCADE")),
        sa.Column("client_message_id", sa.String(64)),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(100)),
        sa.Column("prompt_tokens", sa.Integer()),
        sa.Column("completion_tokens", sa.Integer()),
        sa.Column("ttft_ms", sa.Float()),
        sa.Column("duration_ms", sa.Float()),
        sa.Column("finish_reason", sa.String(32)),
        sa.Column("error_code", sa.String(64)),
        *_timestamps(),
        sa.UniqueConstraint("reply_to", name="uq_messages_reply_to"),
        sa.UniqueConstraint("conversation_id", "client_message_id", name="uq_messages_client_id"),
        schema=S,
    )
    op.create_index(
        "ix_messages_conversation_created", "messages", ["conversation_id", "created_at"], schema=S
    )


def downgrade() -> None:
    op.drop_table("messages", schema=S)
    op.drop_table("conversations", schema=S)
    op.drop_table("assistants", schema=S)

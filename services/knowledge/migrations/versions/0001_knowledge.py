"""knowledge schema: files, their bytes, chunks (+ pgvector embeddings where available), outbox

Revision ID: knowledge_0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from shared.outbox_migration import create_outbox_table, drop_outbox_table

revision = "knowledge_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_outbox_table("knowledge")
    op.create_table(
        "files",
        sa.Column("id", sa.String(14), primary_key=True),
        sa.Column("assistant_id", sa.String(12), nullable=False),
        sa.Column("owner_id", sa.String(16), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("content_type", sa.String(100), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("failure_reason", sa.String(32), nullable=True),
        sa.Column("failure_message", sa.Text(), nullable=True),
        sa.Column("chunk_count", sa.Integer(), nullable=True),
        sa.Column("char_count", sa.Integer(), nullable=True),
        sa.Column("page_count", sa.Integer(), nullable=True),
        sa.Column("language", sa.String(64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        # Deleting an assistant deletes its files (and through them their bytes and chunks).
        # The chat schema is migrated before this one (services/registry.py).
        sa.ForeignKeyConstraint(
            ["assistant_id"], ["chat.assistants.id"], ondelete="CASCADE", name="fk_files_assistant"
        ),
        schema="knowledge",
    )
    op.create_index(
        "ix_files_assistant_created", "files", ["assistant_id", "created_at"], schema="knowledge"
    )
    op.create_index("ix_files_owner_id", "files", ["owner_id"], schema="knowledge")
    op.create_table(
        "file_contents",
        sa.Column(
            "file_id",
            sa.String(14),
            sa.ForeignKey("knowledge.files.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        schema="knowledge",
    )
    op.create_table(
        "chunks",
        sa.Column(
            "file_id",
            sa.String(14),
            sa.ForeignKey("knowledge.files.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("position", sa.Integer(), primary_key=True),
        sa.Column("assistant_id", sa.String(12), nullable=False),
        sa.Column("page", sa.Integer(), nullable=True),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("language", sa.String(64), nullable=False),
        sa.Column("tsv", postgresql.TSVECTOR(), nullable=False),
        schema="knowledge",
    )
    # Keep a chunk's row (its text and, above all, its tsvector) in the table page: moved out
    # to TOAST, every match test and rank re-reads it from there.
    op.execute("ALTER TABLE knowledge.chunks SET (toast_tuple_target = 8160)")
    op.execute("ALTER TABLE knowledge.chunks ALTER COLUMN tsv SET STORAGE MAIN")
    op.create_index("ix_chunks_tsv", "chunks", ["tsv"], schema="knowledge", postgresql_using="gin")
    op.create_index("ix_chunks_assistant", "chunks", ["assistant_id"], schema="knowledge")
    op.create_table(
        "reply_sources",
        sa.Column(
            "message_id",
            sa.String(10),
            sa.ForeignKey("chat.messages.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("sources", postgresql.JSONB(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        schema="knowledge",
    )
    _add_embeddings_where_pgvector_is_available()


def _add_embeddings_where_pgvector_is_available() -> None:
    """Hybrid ranking needs the `vector` extension; without it retrieval is full text alone.
    The chat worker reads which it is from the presence of `chunks.embedding`."""
    bind = op.get_bind()
    available = bind.execute(
        sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")
    ).scalar()
    if not available:
        return
    try:
        # A savepoint: a role that may not create extensions leaves the migration intact.
        with bind.begin_nested():
            bind.execute(sa.text("CREATE EXTENSION IF NOT EXISTS vector"))
    except sa.exc.DBAPIError:
        return
    # No dimension on the column: the embeddings model (and so the size) is a setting; rows
    # of another model are never compared (`embedding_model` is part of every query).
    op.execute("ALTER TABLE knowledge.chunks ADD COLUMN embedding vector")
    op.execute("ALTER TABLE knowledge.chunks ADD COLUMN embedding_model text")


def downgrade() -> None:
    op.drop_table("reply_sources", schema="knowledge")
    op.drop_table("chunks", schema="knowledge")
    op.drop_table("file_contents", schema="knowledge")
    op.drop_table("files", schema="knowledge")
    drop_outbox_table("knowledge")

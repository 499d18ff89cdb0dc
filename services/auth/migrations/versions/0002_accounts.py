"""users, refresh tokens, login failures

Revision ID: auth_0002
Revises: auth_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "auth_0002"
down_revision = "auth_0001"
branch_labels = None
depends_on = None

S = "auth"


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.String(16), primary_key=True),
        sa.Column("username", sa.String(32), nullable=False),
        sa.Column("email", sa.String(254), nullable=False),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("full_name", sa.String(100)),
        sa.Column("roles", sa.ARRAY(sa.String(16)), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("last_login_at", sa.DateTime(timezone=True)),
        schema=S,
    )
    op.create_index(
        "uq_users_username_lower", "users", [sa.text("lower(username)")], unique=True, schema=S
    )
    op.create_index(
        "uq_users_email_lower", "users", [sa.text("lower(email)")], unique=True, schema=S
    )
    op.create_index("ix_users_created_at", "users", ["created_at", "id"], schema=S)

    op.create_table(
        "refresh_tokens",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("family_id", sa.String(32), nullable=False),
        sa.Column(
            "user_id",
            sa.String(16),
            sa.ForeignKey(f"{S}.users.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rotated_at", sa.DateTime(timezone=True)),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("token_hash", name="uq_refresh_tokens_token_hash"),
        schema=S,
    )
    op.create_index("ix_refresh_tokens_family_id", "refresh_tokens", ["family_id"], schema=S)
    op.create_index("ix_refresh_tokens_user_id", "refresh_tokens", ["user_id"], schema=S)

    op.create_table(
        "login_failures",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column("subject", sa.String(300), nullable=False),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=False),
        schema=S,
    )
    op.create_index(
        "ix_login_failures_subject_failed_at",
        "login_failures",
        ["subject", "failed_at"],
        schema=S,
    )


def downgrade() -> None:
    op.drop_table("login_failures", schema=S)
    op.drop_table("refresh_tokens", schema=S)
    op.drop_table("users", schema=S)

"""auth schema and its transactional outbox

Revision ID: auth_0001
Revises:
"""

from shared.outbox_migration import create_outbox_table, drop_outbox_table

revision = "auth_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_outbox_table("auth")


def downgrade() -> None:
    drop_outbox_table("auth")

"""analytics schema

Revision ID: analytics_0001
Revises:
"""

revision = "analytics_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The schema itself is created by env.py before any revision runs.
    pass


def downgrade() -> None:
    pass

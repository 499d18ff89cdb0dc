"""budgets: one counter table per subject and period (rate, tokens, cost), cost budgets, limits
per API key, reservations with their cost; `budgets.refuse` for the admission clause

Revision ID: budgets_0002
Revises: budgets_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "budgets_0002"
down_revision = "budgets_0001"
branch_labels = None
depends_on = None

S = "budgets"
USD = sa.Numeric(20, 10)
SUBJECT = sa.String(64)

# Raised by the gateway's message statement when a request is over a limit, so that statement
# (which runs alone in autocommit on the hot path) stores nothing of it: the message, its event,
# the counters and the reservation are undone together. The detail tells the gateway which
# limit and when its period ends, by the database's clock, the one every gateway shares.
REFUSE = """
CREATE FUNCTION budgets.refuse(period text, subject text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'over the % limit of the %', period, subject
        USING ERRCODE = 'CV429',
              DETAIL = json_build_object(
                  'period', period,
                  'subject', subject,
                  'retry_after_s', extract(epoch FROM
                      (date_trunc(period, now() AT TIME ZONE 'UTC') + ('1 ' || period)::interval)
                      AT TIME ZONE 'UTC' - now()))::text;
END
$$
"""


def upgrade() -> None:
    op.create_table(
        "counters",
        sa.Column("subject_id", SUBJECT, primary_key=True),
        sa.Column("period", sa.String(8), primary_key=True),
        sa.Column("starts", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("owner_id", SUBJECT, nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.Column("used_tokens", sa.BigInteger(), nullable=False),
        sa.Column("reserved_tokens", sa.BigInteger(), nullable=False),
        sa.Column("used_usd", USD, nullable=False),
        sa.Column("reserved_usd", USD, nullable=False),
        sa.CheckConstraint("reserved_tokens >= 0", name="ck_counters_reserved_tokens"),
        sa.CheckConstraint("reserved_usd >= 0", name="ck_counters_reserved_usd"),
        schema=S,
    )
    op.create_index("ix_counters_owner", "counters", ["owner_id", "period", "starts"], schema=S)
    op.execute(
        """
        INSERT INTO budgets.counters
        SELECT user_id, 'day', day::timestamp AT TIME ZONE 'UTC', user_id, requests,
               used_tokens, reserved_tokens, 0, 0
        FROM budgets.daily_usage
        """
    )
    op.drop_table("daily_usage", schema=S)
    op.drop_table("rate_windows", schema=S)

    op.alter_column("limits", "user_id", new_column_name="subject_id", schema=S)
    op.alter_column("limits", "subject_id", type_=SUBJECT, schema=S)
    op.add_column("limits", sa.Column("owner_id", SUBJECT), schema=S)
    op.execute("UPDATE budgets.limits SET owner_id = subject_id")
    op.alter_column("limits", "owner_id", nullable=False, schema=S)
    op.create_index("ix_budgets_limits_owner_id", "limits", ["owner_id"], schema=S)
    op.add_column("limits", sa.Column("cost_per_month_usd", USD), schema=S)

    op.alter_column("reservations", "user_id", type_=SUBJECT, schema=S)
    op.add_column("reservations", sa.Column("key_id", SUBJECT), schema=S)
    for column in ("usd", "input_usd_per_million", "output_usd_per_million"):
        op.add_column(
            "reservations", sa.Column(column, USD, nullable=False, server_default="0"), schema=S
        )
        op.alter_column("reservations", column, server_default=None, schema=S)
    # A reservation counts in the day (and month) of its `created_at` from now on.
    op.execute(
        "UPDATE budgets.reservations SET created_at = day::timestamp AT TIME ZONE 'UTC' "
        "WHERE created_at::date <> day"
    )
    op.drop_column("reservations", "day", schema=S)
    op.execute(REFUSE)


def downgrade() -> None:
    op.execute("DROP FUNCTION budgets.refuse(text, text)")
    op.add_column("reservations", sa.Column("day", sa.Date()), schema=S)
    op.execute("UPDATE budgets.reservations SET day = (created_at AT TIME ZONE 'UTC')::date")
    op.alter_column("reservations", "day", nullable=False, schema=S)
    for column in ("key_id", "usd", "input_usd_per_million", "output_usd_per_million"):
        op.drop_column("reservations", column, schema=S)
    op.drop_column("limits", "cost_per_month_usd", schema=S)
    op.drop_index("ix_budgets_limits_owner_id", "limits", schema=S)
    op.drop_column("limits", "owner_id", schema=S)
    op.alter_column("limits", "subject_id", new_column_name="user_id", schema=S)
    op.create_table(
        "rate_windows",
        sa.Column("user_id", sa.String(16), primary_key=True),
        sa.Column("window_start", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("count", sa.Integer(), nullable=False),
        schema=S,
    )
    op.create_table(
        "daily_usage",
        sa.Column("user_id", sa.String(16), primary_key=True),
        sa.Column("day", sa.Date(), primary_key=True),
        sa.Column("used_tokens", sa.BigInteger(), nullable=False),
        sa.Column("reserved_tokens", sa.BigInteger(), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.CheckConstraint("reserved_tokens >= 0", name="ck_daily_usage_reserved"),
        schema=S,
    )
    op.execute(
        """
        INSERT INTO budgets.daily_usage
        SELECT subject_id, (starts AT TIME ZONE 'UTC')::date, used_tokens, reserved_tokens,
               requests
        FROM budgets.counters WHERE period = 'day' AND length(subject_id) <= 16
        """
    )
    op.drop_table("counters", schema=S)

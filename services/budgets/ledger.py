"""Settle, release, set limits: every change to the ledger besides admission is one statement.

- Admission (count, reserve or refuse) is a clause of the gateway's message statement:
  `admission.py`.
- `SETTLE_CTE`: the clause the worker's final-reply statement includes: deletes the reservation
  and moves its worst case from reserved to the real usage (tokens, and their cost at the prices
  reserved with it) in the day and month rows of the user and of the key, in the same
  transaction that stores the reply. A worker killed mid-reply settles nothing; the redelivered
  request's final statement does. `release_stale` releases what was never settled (no worker
  answered).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.budgets.models import COUNTERS, LIMITS, RESERVATIONS


def _charge_ctes(released: str, prompt_tokens: str, completion_tokens: str) -> str:
    """CTEs moving the reservations in `released` (deleted rows of `reservations`) from
    reserved to used, charging `prompt_tokens` and `completion_tokens` (SQL expressions).

    Counter rows are locked in key order first, as admission upserts them: a settlement and
    an admission of the same user never wait on each other in a cycle."""
    prompt, completion = prompt_tokens, completion_tokens
    return f"""settling AS (
    SELECT subject.id AS subject_id, period.name AS period,
           date_trunc(period.name, r.created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS starts,
           r.tokens, r.usd, {prompt} + {completion} AS used_tokens,
           ({prompt} * r.input_usd_per_million
            + {completion} * r.output_usd_per_million) / 1000000 AS used_usd
    FROM {released} AS r
    CROSS JOIN LATERAL (VALUES (r.user_id), (r.key_id)) AS subject(id)
    CROSS JOIN (VALUES ('day'), ('month')) AS period(name)
    WHERE subject.id IS NOT NULL
), settled_sums AS (
    SELECT subject_id, period, starts, sum(tokens) AS tokens, sum(usd) AS usd,
           sum(used_tokens) AS used_tokens, sum(used_usd) AS used_usd
    FROM settling GROUP BY subject_id, period, starts
), locked AS (
    SELECT c.subject_id, c.period, c.starts
    FROM {COUNTERS} AS c
    JOIN settled_sums AS s USING (subject_id, period, starts)
    ORDER BY c.subject_id, c.period, c.starts
    FOR UPDATE OF c
), charged AS (
    UPDATE {COUNTERS} AS c
    SET reserved_tokens = c.reserved_tokens - s.tokens,
        used_tokens = c.used_tokens + s.used_tokens,
        reserved_usd = c.reserved_usd - s.usd,
        used_usd = c.used_usd + s.used_usd
    FROM settled_sums AS s JOIN locked AS l USING (subject_id, period, starts)
    WHERE c.subject_id = s.subject_id AND c.period = s.period AND c.starts = s.starts
    RETURNING c.subject_id
)"""  # noqa: S608 (names and expressions of our own code only)


def SETTLE_CTE(finished: str, prompt_tokens: str, completion_tokens: str) -> str:
    """CTEs settling the reservation of the user message `finished` answers.

    `finished` is a CTE returning `reply_to`; `prompt_tokens` and `completion_tokens` the SQL
    expressions of the real usage (0 when the reply failed before any)."""
    return f"""settled AS (
    DELETE FROM {RESERVATIONS} AS r USING {finished} AS f
    WHERE r.message_id = f.reply_to
    RETURNING r.*
), {_charge_ctes("settled", prompt_tokens, completion_tokens)}"""  # noqa: S608


_RELEASE_STALE = text(
    f"""
    WITH stale AS (
        DELETE FROM {RESERVATIONS} WHERE created_at < CAST(:before AS timestamptz)
        RETURNING *
    ), {_charge_ctes("stale", "0", "0")}
    SELECT count(*) FROM stale
    """  # noqa: S608 (table names only)
)

_FORGET_OLD_MINUTES = text(
    f"DELETE FROM {COUNTERS} WHERE period = 'minute' AND starts < CAST(:before AS timestamptz)"  # noqa: S608
)


async def release_stale(session: AsyncSession, older_than: timedelta) -> int:
    """Give back reservations no reply settled in `older_than` (no worker ever answered), and
    forget request counts of minutes long past. Returns how many reservations were released."""
    now = datetime.now(UTC)
    released = await session.scalar(_RELEASE_STALE, {"before": now - older_than})
    await session.execute(_FORGET_OLD_MINUTES, {"before": now - timedelta(minutes=2)})
    return int(released or 0)


_SET_LIMITS = text(
    f"""
    INSERT INTO {LIMITS}
        (subject_id, owner_id, requests_per_minute, tokens_per_day, cost_per_month_usd)
    VALUES (CAST(:subject AS varchar), CAST(:owner AS varchar), CAST(:rpm AS integer),
            CAST(:tpd AS bigint), CAST(:cpm AS numeric))
    ON CONFLICT (subject_id) DO UPDATE
    SET owner_id = EXCLUDED.owner_id,
        requests_per_minute = EXCLUDED.requests_per_minute,
        tokens_per_day = EXCLUDED.tokens_per_day,
        cost_per_month_usd = EXCLUDED.cost_per_month_usd, updated_at = now()
    """  # noqa: S608 (table names only)
)


async def set_limits(
    session: AsyncSession,
    subject_id: str,
    owner_id: str,
    *,
    requests_per_minute: int | None,
    tokens_per_day: int | None,
    cost_per_month_usd: Decimal | None,
) -> None:
    """Replace a subject's limits (a user: `owner_id == subject_id`; a key: its owner)."""
    await session.execute(
        _SET_LIMITS,
        {
            "subject": subject_id,
            "owner": owner_id,
            "rpm": requests_per_minute,
            "tpd": tokens_per_day,
            "cpm": cost_per_month_usd,
        },
    )

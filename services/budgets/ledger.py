"""Reserve, settle, release: every change to the ledger is one SQL statement.

- `check_rate`: one upsert counts the request in the user's current clock minute, only while
  under `requests_per_minute` (cluster-wide: every gateway counts in the same row).
- `reserve`: one statement adds the worst case to the day's `reserved_tokens` only while
  `used + reserved + worst case <= tokens_per_day`, and records the reservation under the user
  message's id. Run in the edge's transaction with the message itself, so a refused
  reservation stores no message, and a stored message always has its reservation.
- `SETTLE_CTE`: the clause the worker's final-reply statement includes: deletes the
  reservation and moves its tokens from reserved to the real usage, in the same transaction
  that stores the reply. A worker killed mid-reply settles nothing; the redelivered request's
  final statement does. `release_stale` releases what was never settled (no worker answered).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.budgets.models import DAILY_USAGE, LIMITS, RATE_WINDOWS, RESERVATIONS

UNLIMITED = 2**62


class OverLimit(Exception):
    """Refused by the ledger; `reason` is `rate_limited` or `budget_exceeded`."""

    def __init__(self, reason: str, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retry_after_s = retry_after_s


def _today(now: datetime) -> date:
    return now.astimezone(UTC).date()


_CHECK_RATE = text(
    f"""
    INSERT INTO {RATE_WINDOWS} AS w (user_id, window_start, count)
    SELECT CAST(:user_id AS varchar), CAST(:window AS timestamptz), 1
    WHERE coalesce((SELECT requests_per_minute FROM {LIMITS} WHERE user_id = :user_id),
                   CAST(:default AS integer)) >= 1
    ON CONFLICT (user_id, window_start) DO UPDATE SET count = w.count + 1
    WHERE w.count < coalesce(
        (SELECT requests_per_minute FROM {LIMITS} WHERE user_id = :user_id),
        CAST(:default AS integer))
    RETURNING count
    """  # noqa: S608 (table names only)
)


async def check_rate(
    session: AsyncSession, user_id: str, default_per_minute: int, now: datetime | None = None
) -> None:
    now = now or datetime.now(UTC)
    window = now.replace(second=0, microsecond=0)
    row = (
        await session.execute(
            _CHECK_RATE, {"user_id": user_id, "window": window, "default": default_per_minute}
        )
    ).first()
    if row is None:
        retry = (window + timedelta(minutes=1) - now).total_seconds()
        raise OverLimit("rate_limited", "Too many requests this minute", retry)


_RESERVE = text(
    f"""
    WITH lim AS (
        SELECT coalesce((SELECT tokens_per_day FROM {LIMITS} WHERE user_id = :user_id),
                        {UNLIMITED}) AS tokens_per_day
    ), counted AS (
        INSERT INTO {DAILY_USAGE} AS d (user_id, day, used_tokens, reserved_tokens, requests)
        SELECT CAST(:user_id AS varchar), CAST(:day AS date), 0, CAST(:tokens AS bigint), 1
        FROM lim WHERE CAST(:tokens AS bigint) <= lim.tokens_per_day
        ON CONFLICT (user_id, day) DO UPDATE
        SET reserved_tokens = d.reserved_tokens + CAST(:tokens AS bigint), requests = d.requests + 1
        WHERE d.used_tokens + d.reserved_tokens + CAST(:tokens AS bigint)
              <= (SELECT tokens_per_day FROM lim)
        RETURNING user_id
    )
    INSERT INTO {RESERVATIONS} (message_id, user_id, day, tokens)
    SELECT CAST(:message_id AS varchar), user_id, CAST(:day AS date), CAST(:tokens AS bigint)
    FROM counted
    RETURNING message_id
    """  # noqa: S608 (table names only)
)


async def reserve(
    session: AsyncSession, user_id: str, message_id: str, tokens: int, now: datetime | None = None
) -> None:
    now = now or datetime.now(UTC)
    params = {"user_id": user_id, "day": _today(now), "tokens": tokens, "message_id": message_id}
    if (await session.execute(_RESERVE, params)).first() is None:
        tomorrow = datetime.combine(_today(now) + timedelta(days=1), datetime.min.time(), UTC)
        raise OverLimit(
            "budget_exceeded",
            f"Daily token budget exhausted (this request reserves {tokens} tokens)",
            (tomorrow - now).total_seconds(),
        )


def SETTLE_CTE(finished: str, used_tokens: str) -> str:
    """CTEs settling the reservation of the user message `finished` answers.

    `finished` is a CTE returning `reply_to`; `used_tokens` the SQL expression of the real
    usage (prompt + completion tokens, 0 when the reply failed before any)."""
    return f"""settled AS (
    DELETE FROM {RESERVATIONS} AS r USING {finished} AS f
    WHERE r.message_id = f.reply_to
    RETURNING r.user_id, r.day, r.tokens
), charged AS (
    UPDATE {DAILY_USAGE} AS d
    SET reserved_tokens = d.reserved_tokens - s.tokens,
        used_tokens = d.used_tokens + {used_tokens}
    FROM settled AS s WHERE d.user_id = s.user_id AND d.day = s.day
    RETURNING d.user_id
)"""  # noqa: S608 (names and expressions of our own code only)


_RELEASE_STALE = text(
    f"""
    WITH stale AS (
        DELETE FROM {RESERVATIONS} WHERE created_at < CAST(:before AS timestamptz)
        RETURNING user_id, day, tokens
    ), sums AS (SELECT user_id, day, sum(tokens) AS tokens FROM stale GROUP BY user_id, day)
    UPDATE {DAILY_USAGE} AS d SET reserved_tokens = d.reserved_tokens - sums.tokens
    FROM sums WHERE d.user_id = sums.user_id AND d.day = sums.day
    """  # noqa: S608 (table names only)
)


async def release_stale(session: AsyncSession, older_than: timedelta) -> None:
    """Give back reservations no reply settled in `older_than` (no worker ever answered)."""
    await session.execute(_RELEASE_STALE, {"before": datetime.now(UTC) - older_than})


@dataclass(frozen=True)
class UsageToday:
    used_tokens: int
    reserved_tokens: int
    requests: int
    tokens_per_day: int | None
    requests_per_minute: int | None

    @property
    def remaining_tokens(self) -> int | None:
        if self.tokens_per_day is None:
            return None
        return max(0, self.tokens_per_day - self.used_tokens - self.reserved_tokens)


_USAGE = text(
    f"""
    SELECT coalesce(d.used_tokens, 0) AS used_tokens,
           coalesce(d.reserved_tokens, 0) AS reserved_tokens,
           coalesce(d.requests, 0) AS requests,
           l.tokens_per_day, l.requests_per_minute
    FROM (SELECT 1) AS one
    LEFT JOIN {DAILY_USAGE} AS d ON d.user_id = :user_id AND d.day = :day
    LEFT JOIN {LIMITS} AS l ON l.user_id = :user_id
    """  # noqa: S608 (table names only)
)


async def usage_today(session: AsyncSession, user_id: str) -> UsageToday:
    row = (
        await session.execute(_USAGE, {"user_id": user_id, "day": _today(datetime.now(UTC))})
    ).one()
    return UsageToday(
        row.used_tokens,
        row.reserved_tokens,
        row.requests,
        row.tokens_per_day,
        row.requests_per_minute,
    )


_SET_LIMITS = text(
    f"""
    INSERT INTO {LIMITS} (user_id, requests_per_minute, tokens_per_day)
    VALUES (CAST(:user_id AS varchar), CAST(:rpm AS integer), CAST(:tpd AS bigint))
    ON CONFLICT (user_id) DO UPDATE
    SET requests_per_minute = EXCLUDED.requests_per_minute,
        tokens_per_day = EXCLUDED.tokens_per_day, updated_at = now()
    """  # noqa: S608 (table names only)
)


async def set_limits(
    session: AsyncSession, user_id: str, requests_per_minute: int | None, tokens_per_day: int | None
) -> None:
    await session.execute(
        _SET_LIMITS, {"user_id": user_id, "rpm": requests_per_minute, "tpd": tokens_per_day}
    )


def worst_case_tokens(prompt_chars: int, messages: int, max_tokens: int) -> int:
    """An upper estimate of the prompt (a token is at least ~3 characters in practice, plus
    the per-message overhead tokenizers add) plus the most the reply may use."""
    return math.ceil(prompt_chars / 3) + 8 * (messages + 1) + max_tokens

"""What a user (and each of their API keys) used this minute, today and this month, against
their limits: `GET /me/usage` and the admin's view of everyone."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.budgets.models import COUNTERS, LIMITS


@dataclass(frozen=True)
class SubjectUsage:
    subject_id: str
    owner_id: str
    requests_per_minute: int | None
    tokens_per_day: int | None
    cost_per_month_usd: Decimal | None
    requests_this_minute: int
    requests_today: int
    used_tokens_today: int
    reserved_tokens_today: int
    used_tokens_this_month: int
    used_usd_this_month: Decimal
    reserved_usd_this_month: Decimal

    @property
    def is_key(self) -> bool:
        return self.subject_id != self.owner_id

    @property
    def remaining_tokens_today(self) -> int | None:
        if self.tokens_per_day is None:
            return None
        return max(0, self.tokens_per_day - self.used_tokens_today - self.reserved_tokens_today)

    @property
    def remaining_usd_this_month(self) -> Decimal | None:
        if self.cost_per_month_usd is None:
            return None
        left = self.cost_per_month_usd - self.used_usd_this_month - self.reserved_usd_this_month
        return max(Decimal(0), left)


# Subjects of the owners asked for: those with limits, or with counts this month.
_USAGE = f"""
WITH clock AS (
    SELECT date_trunc('minute', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS minute,
           date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS day,
           date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS month
), subjects AS (
    SELECT subject_id, owner_id FROM {LIMITS} WHERE owner_id = ANY(:owners)
    UNION
    SELECT c.subject_id, c.owner_id FROM {COUNTERS} AS c, clock
    WHERE c.owner_id = ANY(:owners) AND c.period = 'month' AND c.starts = clock.month
)
SELECT s.subject_id, s.owner_id,
       l.requests_per_minute, l.tokens_per_day, l.cost_per_month_usd,
       coalesce(mi.requests, 0) AS requests_this_minute,
       coalesce(d.requests, 0) AS requests_today,
       coalesce(d.used_tokens, 0) AS used_tokens_today,
       coalesce(d.reserved_tokens, 0) AS reserved_tokens_today,
       coalesce(mo.used_tokens, 0) AS used_tokens_this_month,
       coalesce(mo.used_usd, 0) AS used_usd_this_month,
       coalesce(mo.reserved_usd, 0) AS reserved_usd_this_month
FROM subjects AS s CROSS JOIN clock
LEFT JOIN {LIMITS} AS l ON l.subject_id = s.subject_id
LEFT JOIN {COUNTERS} AS mi
       ON mi.subject_id = s.subject_id AND mi.period = 'minute' AND mi.starts = clock.minute
LEFT JOIN {COUNTERS} AS d
       ON d.subject_id = s.subject_id AND d.period = 'day' AND d.starts = clock.day
LEFT JOIN {COUNTERS} AS mo
       ON mo.subject_id = s.subject_id AND mo.period = 'month' AND mo.starts = clock.month
ORDER BY s.owner_id, s.subject_id <> s.owner_id, s.subject_id
"""  # noqa: S608 (table names only)


def _usage(row: Any) -> SubjectUsage:
    return SubjectUsage(**row._mapping)


def _empty(user_id: str) -> SubjectUsage:
    return SubjectUsage(user_id, user_id, None, None, None, 0, 0, 0, 0, 0, Decimal(0), Decimal(0))


@dataclass(frozen=True)
class OwnerUsage:
    """A user's own usage and that of each key with limits or use this month."""

    user: SubjectUsage
    keys: list[SubjectUsage]


async def usage_of(session: AsyncSession, owner_ids: Sequence[str]) -> list[OwnerUsage]:
    """Each owner's usage (zeros for an owner the ledger has never seen), in the given order."""
    rows = (await session.execute(text(_USAGE), {"owners": list(owner_ids)})).all()
    by_owner: dict[str, OwnerUsage] = {owner: OwnerUsage(_empty(owner), []) for owner in owner_ids}
    for row in rows:
        usage = _usage(row)
        owner = by_owner[usage.owner_id]
        if usage.is_key:
            owner.keys.append(usage)
        else:
            by_owner[usage.owner_id] = OwnerUsage(usage, owner.keys)
    return [by_owner[owner] for owner in owner_ids]


_OWNERS = f"""
SELECT owner_id FROM {LIMITS}
UNION
SELECT owner_id FROM {COUNTERS}
WHERE period = 'month'
  AND starts = date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
"""  # noqa: S608 (table names only)


async def everyones_usage(
    session: AsyncSession, skip: int, limit: int
) -> tuple[list[OwnerUsage], int]:
    """One page of every user with limits or use this month (by user id), and how many
    there are."""
    total = await session.scalar(text(f"SELECT count(*) FROM ({_OWNERS}) AS owners"))  # noqa: S608
    page = text(f"{_OWNERS} ORDER BY owner_id OFFSET :skip LIMIT :limit")
    owners = (await session.scalars(page, {"skip": skip, "limit": limit})).all()
    return await usage_of(session, list(owners)), int(total or 0)

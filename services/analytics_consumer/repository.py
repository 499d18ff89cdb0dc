"""Dashboard queries. They read rollups and per-entity counters, never the raw reply history."""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.analytics_consumer import models
from shared.ids import ANONYMOUS_OWNER_PREFIX
from shared.like_pattern import LIKE_ESCAPE, contains_pattern

UsersRankedBy = Literal["messages", "tokens"]

ESTIMATED_COLUMNS = ("estimated_replies", "estimated_prompt_tokens", "estimated_completion_tokens")
"""Rollup columns counting, apart, the replies (and their tokens) whose usage was estimated."""


def estimated_counts(row: Mapping[str, Any]) -> dict[str, int]:
    """The `ESTIMATED_COLUMNS` of a rollup row or sum, as ints (a NULL sum is 0)."""
    return {name: int(row.get(name) or 0) for name in ESTIMATED_COLUMNS}


@dataclass(frozen=True)
class DateRange:
    """Inclusive UTC days; either end may be open."""

    start: date | None = None
    end: date | None = None

    def start_at(self) -> datetime | None:
        if self.start is None:
            return None
        return datetime.combine(self.start, datetime.min.time(), UTC)

    def end_before(self) -> datetime | None:
        if self.end is None or self.end == date.max:
            return None  # the calendar's last day has no next day: nothing is excluded
        return datetime.combine(self.end + timedelta(days=1), datetime.min.time(), UTC)


@dataclass(frozen=True)
class Percentiles:
    p50: float | None
    p95: float | None


_COARSE_MS = 100


async def _histogram_percentiles(
    driver: Any, model: str, percentiles: Sequence[float]
) -> list[float | None]:
    """Nearest-rank percentiles in two small reads instead of one over every bucket.

    First the counts per 100 ms (tens of rows) locate the range each rank falls in, then only
    the millisecond buckets of those ranges are read: the result is exact, the reads tiny.
    """
    coarse = await driver.fetch(
        "SELECT bucket_ms / $2 AS coarse, sum(replies)::bigint AS replies "
        "FROM analytics.ttft_histogram WHERE model = $1 GROUP BY 1 ORDER BY 1",
        model,
        _COARSE_MS,
    )
    total = sum(row["replies"] for row in coarse)
    if total == 0:
        return [None for _ in percentiles]
    ranks = [max(1, math.ceil(p / 100 * total)) for p in percentiles]
    # For each rank: its coarse range and how many replies lie below that range.
    located: list[tuple[int, int]] = []
    for rank in ranks:
        below = 0
        for row in coarse:
            if below + row["replies"] >= rank:
                located.append((row["coarse"], below))
                break
            below += row["replies"]
    fine = await driver.fetch(
        "SELECT bucket_ms, replies FROM analytics.ttft_histogram "
        "WHERE model = $1 AND bucket_ms / $2 = ANY($3::int[]) ORDER BY bucket_ms",
        model,
        _COARSE_MS,
        sorted({c for c, _ in located}),
    )
    values: list[float | None] = []
    for rank, (range_, below) in zip(ranks, located, strict=True):
        seen = below
        value: float | None = None
        for row in fine:
            if row["bucket_ms"] // _COARSE_MS != range_:
                continue
            seen += row["replies"]
            if seen >= rank:
                value = float(row["bucket_ms"])
                break
        values.append(value)
    return values


async def count_rows(session: AsyncSession, query: Select[Any] | Any) -> int:
    total = await session.scalar(select(func.count()).select_from(query.order_by(None).subquery()))
    return int(total or 0)


# --- summary ------------------------------------------------------------------------


async def totals(session: AsyncSession) -> dict[str, Any]:
    """Lifetime sums of every daily column, today's active users and the user count."""
    # One round trip; the dashboard's landing page calls this on every refresh.
    d, u = models.DailyStats, models.AnalyticsUser
    columns = [c for c in d.__table__.columns if c.name not in ("day", "active_users")]
    sums = select(*(func.coalesce(func.sum(c), 0).label(c.name) for c in columns))
    today = select(d.active_users).where(d.day == datetime.now(UTC).date()).scalar_subquery()
    anonymous = u.user_id.startswith(ANONYMOUS_OWNER_PREFIX, autoescape=True)
    users = select(func.count()).select_from(u).where(u.deleted_at.is_(None), ~anonymous)
    anonymous_users = select(func.count()).select_from(u).where(anonymous)
    query = sums.add_columns(
        func.coalesce(today, 0).label("active_users_today"),
        users.scalar_subquery().label("total_users"),
        anonymous_users.scalar_subquery().label("anonymous_users"),
    )
    row = (await session.execute(query)).one()
    return dict(row._mapping)


async def ttft_percentiles(
    session: AsyncSession, model: str | None = None
) -> dict[str, Percentiles]:
    """Lifetime time-to-first-token percentiles of `model` (`ALL_MODELS`), or of each."""
    # Straight to asyncpg: SQLAlchemy's row processing cost more than the queries.
    connection = await (await session.connection()).get_raw_connection()
    driver: Any = connection.driver_connection
    if model is None:
        names = [
            row[0]
            for row in await driver.fetch(
                "SELECT DISTINCT model FROM analytics.ttft_histogram WHERE model <> $1",
                models.ALL_MODELS,
            )
        ]
    else:
        names = [model]
    result = {}
    for name in names:
        p50, p95 = await _histogram_percentiles(driver, name, (50, 95))
        if p50 is not None:
            result[name] = Percentiles(p50, p95)
    return result


async def system_metrics(session: AsyncSession) -> dict[str, float]:
    rows = await session.execute(select(models.SystemMetric.name, models.SystemMetric.value))
    return {name: float(value) for name, value in rows.all()}


# --- users --------------------------------------------------------------------------


async def list_activities(
    session: AsyncSession,
    *,
    user_id: str | None,
    activity_type: str | None,
    days: DateRange,
    skip: int,
    limit: int,
) -> tuple[list[models.UserActivity], int]:
    a = models.UserActivity
    query = select(a)
    if user_id is not None:
        query = query.where(a.user_id == user_id)
    if activity_type is not None:
        query = query.where(a.activity_type == activity_type)
    query = _in_range(query, a.occurred_at, days)
    total = await count_rows(session, query)
    page = await session.scalars(
        query.order_by(a.occurred_at.desc(), a.id.desc()).offset(skip).limit(limit)
    )
    return list(page), total


async def add_activity(session: AsyncSession, values: dict[str, Any]) -> models.UserActivity:
    activity = models.UserActivity(event_id=uuid.uuid4(), source="manual", **values)
    session.add(activity)
    await session.flush()
    return activity


async def top_users(
    session: AsyncSession, *, by: UsersRankedBy, since: date | None, skip: int, limit: int
) -> tuple[list[dict[str, Any]], int]:
    u = models.AnalyticsUser
    if since is None:
        source = (
            select(
                u.user_id,
                u.user_messages,
                u.replies,
                u.prompt_tokens,
                u.completion_tokens,
                u.cost_usd,
            )
            .where(u.deleted_at.is_(None))
            .subquery()
        )
    else:
        d = models.DailyUserStats
        source = (
            select(
                d.user_id,
                func.sum(d.user_messages).label("user_messages"),
                func.sum(d.replies).label("replies"),
                func.sum(d.prompt_tokens).label("prompt_tokens"),
                func.sum(d.completion_tokens).label("completion_tokens"),
                func.sum(d.cost_usd).label("cost_usd"),
            )
            .where(d.day >= since)
            .group_by(d.user_id)
            .subquery()
        )
    tokens = source.c.prompt_tokens + source.c.completion_tokens
    metric = source.c.user_messages if by == "messages" else tokens
    query = (
        select(source, tokens.label("total_tokens"), u.username)
        .join(u, u.user_id == source.c.user_id)
        .where(u.deleted_at.is_(None), metric > 0)
    )
    total = await count_rows(session, query)
    rows = await session.execute(
        query.order_by(metric.desc(), source.c.user_id).offset(skip).limit(limit)
    )
    return [dict(row._mapping) for row in rows], total


async def list_users(
    session: AsyncSession, *, active_only: bool, q: str | None, skip: int, limit: int
) -> tuple[list[models.AnalyticsUser], int]:
    u = models.AnalyticsUser
    query = select(u).where(u.deleted_at.is_(None))
    if active_only:
        query = query.where(u.is_active.is_(True))
    if q:
        query = query.where(u.username.ilike(contains_pattern(q), escape=LIKE_ESCAPE))
    total = await count_rows(session, query)
    page = await session.scalars(
        query.order_by(u.first_seen_at.desc(), u.user_id).offset(skip).limit(limit)
    )
    return list(page), total


# --- conversations, api, days, models -----------------------------------------------


async def list_conversations(
    session: AsyncSession, *, user_id: str | None, days: DateRange, skip: int, limit: int
) -> tuple[list[models.ConversationMetrics], int]:
    c = models.ConversationMetrics
    query = _in_range(select(c), c.started_at, days)
    if user_id is not None:
        query = query.where(c.user_id == user_id)
    total = await count_rows(session, query)
    page = await session.scalars(
        query.order_by(c.started_at.desc(), c.conversation_id).offset(skip).limit(limit)
    )
    return list(page), total


async def api_usage(
    session: AsyncSession, *, service: str | None, days: DateRange, skip: int, limit: int
) -> tuple[list[dict[str, Any]], int]:
    a = models.DailyApiUsage
    query = select(
        a.service,
        a.route,
        a.method,
        func.sum(a.calls).label("calls"),
        func.sum(a.calls).filter(a.status_code >= 500).label("server_errors"),
        func.sum(a.calls).filter(a.status_code >= 400, a.status_code < 500).label("client_errors"),
        func.sum(a.duration_ms_total).label("duration_ms_total"),
        func.max(a.duration_ms_max).label("max_latency_ms"),
    ).group_by(a.service, a.route, a.method)
    if service is not None:
        query = query.where(a.service == service)
    if days.start is not None:
        query = query.where(a.day >= days.start)
    if days.end is not None:
        query = query.where(a.day <= days.end)
    total = await count_rows(session, query)
    rows = await session.execute(
        query.order_by(func.sum(a.calls).desc(), a.service, a.route, a.method)
        .offset(skip)
        .limit(limit)
    )
    return [dict(row._mapping) for row in rows], total


async def ttft_by_day(session: AsyncSession, days: DateRange) -> dict[date, dict[str, Any]]:
    """Nearest-rank p50/p95 time-to-first-token of the completed replies of each UTC day."""
    r = models.ReplyMetrics
    day = func.date(func.timezone("UTC", r.occurred_at)).label("day")
    query = (
        select(
            day,
            func.count().label("replies"),
            func.percentile_disc(0.5).within_group(r.ttft_ms).label("p50"),
            func.percentile_disc(0.95).within_group(r.ttft_ms).label("p95"),
        )
        .where(r.status == "completed", r.ttft_ms.is_not(None))
        .group_by(day)
    )
    rows = await session.execute(_in_range(query, r.occurred_at, days))
    return {row.day: dict(row._mapping) for row in rows}


async def daily_stats(
    session: AsyncSession, first: date, last: date
) -> dict[date, models.DailyStats]:
    d = models.DailyStats
    rows = await session.scalars(select(d).where(d.day >= first, d.day <= last))
    return {row.day: row for row in rows}


async def model_usage(session: AsyncSession, days: DateRange) -> list[dict[str, Any]]:
    m = models.DailyModelStats
    sums = [
        func.sum(c).label(c.name)
        for c in models.DailyModelStats.__table__.columns
        if c.name not in ("day", "model")
    ]
    query = select(m.model, *sums).group_by(m.model)
    if days.start is not None:
        query = query.where(m.day >= days.start)
    if days.end is not None:
        query = query.where(m.day <= days.end)
    rows = await session.execute(query)
    return [dict(row._mapping) for row in rows]


def _in_range(query: Select[Any], column: Any, days: DateRange) -> Select[Any]:
    start, end = days.start_at(), days.end_before()
    conditions: list[ColumnElement[bool]] = []
    if start is not None:
        conditions.append(column >= start)
    if end is not None:
        conditions.append(column < end)
    return query.where(*conditions) if conditions else query


def money(value: Decimal | float | int | None) -> float:
    return float(value or 0)

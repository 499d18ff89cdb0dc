"""Usage per API key (`/v1` requests): the query, and its two routes — admins and managers see
every key (`GET /api/v1/analytics/api-keys`), a user sees their own
(`GET /api/v1/analytics/me/api-keys`).

A key is listed when analytics saw its creation or a reply to a request made with it; requests
made with a user's access token rather than a key count for the user, not here.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.analytics_consumer import models
from services.analytics_consumer.api import DbSession, EndDay, StartDay, date_range
from services.analytics_consumer.repository import (
    ESTIMATED_COLUMNS,
    DateRange,
    count_rows,
    estimated_counts,
    money,
)
from services.analytics_consumer.schemas import ApiKeyUsageRow
from shared.pagination import Page, ReportLimit, Skip
from shared.security import CurrentPrincipal, Role, require_roles

_SUMMED = (
    "replies_completed",
    "replies_failed",
    "replies_cancelled",
    "prompt_tokens",
    "completion_tokens",
    *ESTIMATED_COLUMNS,
    "cost_usd",
)


async def api_key_usage(
    session: AsyncSession, *, user_id: str | None, days: DateRange, skip: int, limit: int
) -> tuple[list[dict[str, Any]], int]:
    """One row per key over `days`: its sums (0 where unused), name and owner; most tokens
    first."""
    d, k, u = models.DailyApiKeyStats, models.ApiKey, models.AnalyticsUser
    usage = select(
        d.api_key_id,
        d.user_id,
        *(func.sum(getattr(d, column)).label(column) for column in _SUMMED),
    ).group_by(d.api_key_id, d.user_id)
    if days.start is not None:
        usage = usage.where(d.day >= days.start)
    if days.end is not None:
        usage = usage.where(d.day <= days.end)
    used = usage.subquery()
    # Keys seen only by their creation, usage seen only by its replies, or both.
    keys = (
        select(
            func.coalesce(used.c.api_key_id, k.key_id).label("api_key_id"),
            func.coalesce(used.c.user_id, k.user_id).label("user_id"),
            k.name,
            k.prefix,
            k.created_at,
            k.revoked_at,
            *(func.coalesce(used.c[column], 0).label(column) for column in _SUMMED),
        )
        .select_from(used.join(k, used.c.api_key_id == k.key_id, full=True))
        .subquery()
    )
    tokens = keys.c.prompt_tokens + keys.c.completion_tokens
    query = select(keys, u.username).outerjoin(u, u.user_id == keys.c.user_id)
    if user_id is not None:
        query = query.where(keys.c.user_id == user_id)
    total = await count_rows(session, query)
    rows = await session.execute(
        query.order_by(tokens.desc(), keys.c.api_key_id).offset(skip).limit(limit)
    )
    return [dict(row._mapping) for row in rows], total


def _row(r: dict[str, Any]) -> ApiKeyUsageRow:
    completed, failed, cancelled = (
        int(r["replies_completed"]),
        int(r["replies_failed"]),
        int(r["replies_cancelled"]),
    )
    prompt, completion = int(r["prompt_tokens"]), int(r["completion_tokens"])
    return ApiKeyUsageRow(
        api_key_id=r["api_key_id"],
        user_id=r["user_id"] or None,
        username=r["username"],
        name=r["name"],
        prefix=r["prefix"],
        created_at=r["created_at"],
        revoked_at=r["revoked_at"],
        requests=completed + failed + cancelled,
        replies_completed=completed,
        replies_failed=failed,
        replies_cancelled=cancelled,
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        **estimated_counts(r),
        cost_usd=money(r["cost_usd"]),
    )


async def _page(
    session: AsyncSession,
    user_id: str | None,
    start: StartDay,
    end: EndDay,
    skip: int,
    limit: int,
) -> Page[ApiKeyUsageRow]:
    rows, total = await api_key_usage(
        session, user_id=user_id, days=date_range(start, end), skip=skip, limit=limit
    )
    return Page(items=[_row(r) for r in rows], total=total, skip=skip, limit=limit)


OwnerFilter = Annotated[str | None, Query(max_length=64, description="Only this user's keys.")]

readers = APIRouter(
    prefix="/api/v1/analytics",
    tags=["analytics"],
    dependencies=[require_roles(Role.ADMIN, Role.MANAGER)],
)
own = APIRouter(prefix="/api/v1/analytics", tags=["analytics"])


@readers.get("/api-keys")
async def every_key_usage(
    session: DbSession,
    user_id: OwnerFilter = None,
    start: StartDay = None,
    end: EndDay = None,
    skip: Skip = 0,
    limit: ReportLimit = 50,
) -> Page[ApiKeyUsageRow]:
    """Usage per API key, most tokens first."""
    return await _page(session, user_id, start, end, skip, limit)


@own.get("/me/api-keys")
async def own_key_usage(
    principal: CurrentPrincipal,
    session: DbSession,
    start: StartDay = None,
    end: EndDay = None,
    skip: Skip = 0,
    limit: ReportLimit = 50,
) -> Page[ApiKeyUsageRow]:
    """The caller's own API keys and their usage (any signed-in user)."""
    return await _page(session, principal.user_id, start, end, skip, limit)

"""Dashboard API under /api/v1/analytics/: admins read and write, managers read, nobody else.

Totals, users, conversations, API usage, models and tracked activities; the per-day series
are in `daily_api.py`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from sqlalchemy.ext.asyncio import AsyncSession

from services.analytics_consumer import models, repository
from services.analytics_consumer.repository import (
    DateRange,
    UsersRankedBy,
    estimated_counts,
    money,
)
from services.analytics_consumer.schemas import (
    Activity,
    AnalyticsHealth,
    ApiUsageRow,
    ConversationRow,
    ModelRow,
    Summary,
    TopUser,
    TrackActivity,
    UserRow,
)
from services.budgets.pricing import PriceTable
from shared.db import transaction
from shared.pagination import Limit, Page, ReportLimit, Skip
from shared.security import Role, require_roles

MAX_DAYS = 366


async def _session(request: Request) -> AsyncIterator[AsyncSession]:
    async with transaction(request.app.state.runtime.sessions) as session:
        yield session


DbSession = Annotated[AsyncSession, Depends(_session)]
StartDay = Annotated[date | None, Query(description="First UTC day, inclusive (YYYY-MM-DD).")]
EndDay = Annotated[date | None, Query(description="Last UTC day, inclusive (YYYY-MM-DD).")]


def date_range(start: date | None, end: date | None) -> DateRange:
    if start is not None and end is not None and start > end:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail="start is after end")
    return DateRange(start, end)


def _avg(total: float, count: int) -> float | None:
    return total / count if count else None


def _rate(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def _prices(request: Request) -> PriceTable:
    prices: PriceTable = request.app.state.prices
    return prices


def readers_router() -> APIRouter:
    """Routes admins and managers read (a route that writes asks for admins itself)."""
    return APIRouter(
        prefix="/api/v1/analytics",
        tags=["analytics"],
        dependencies=[require_roles(Role.ADMIN, Role.MANAGER)],
    )


readers = readers_router()
public = APIRouter(prefix="/api/v1/analytics", tags=["analytics"])


@public.get("/health")
async def analytics_health(request: Request) -> AnalyticsHealth:
    consumer = request.app.state.consumer
    return AnalyticsHealth(status="ok", consumer_connected=consumer.connected)


@readers.get("/summary")
async def summary(session: DbSession) -> Summary:
    t = await repository.totals(session)
    completed, failed, cancelled = (
        int(t["replies_completed"]),
        int(t["replies_failed"]),
        int(t["replies_cancelled"]),
    )
    ttft = (await repository.ttft_percentiles(session, models.ALL_MODELS)).get(models.ALL_MODELS)
    api_calls = int(t["api_calls"])
    return Summary(
        total_users=int(t["total_users"]),
        anonymous_users=int(t["anonymous_users"]),
        active_users_today=int(t["active_users_today"]),
        total_conversations=int(t["conversations_created"]),
        total_messages=int(t["user_messages"]) + completed + cancelled,
        user_messages=int(t["user_messages"]),
        assistant_messages=completed + cancelled,
        replies_completed=completed,
        replies_failed=failed,
        replies_cancelled=cancelled,
        total_tokens=int(t["prompt_tokens"]) + int(t["completion_tokens"]),
        prompt_tokens=int(t["prompt_tokens"]),
        completion_tokens=int(t["completion_tokens"]),
        **estimated_counts(t),
        total_cost_usd=money(t["cost_usd"]),
        total_api_calls=api_calls,
        avg_response_time=_avg(float(t["reply_duration_ms_total"]), completed),
        avg_api_latency_ms=_avg(float(t["api_duration_ms_total"]), api_calls),
        error_rate=_rate(int(t["api_server_errors"]), api_calls),
        reply_failure_rate=_rate(failed, completed + failed + cancelled),
        avg_ttft_ms=_avg(float(t["ttft_ms_total"]), completed),
        ttft_p50_ms=ttft.p50 if ttft else None,
        ttft_p95_ms=ttft.p95 if ttft else None,
        logins=int(t["logins"]),
        failed_logins=int(t["failed_logins"]),
        system=await repository.system_metrics(session),
    )


@readers.get("/users/activities")
async def user_activities(
    session: DbSession,
    skip: Skip = 0,
    limit: ReportLimit = 50,
    user_id: Annotated[str | None, Query(max_length=64)] = None,
    activity_type: Annotated[str | None, Query(max_length=32)] = None,
    start: StartDay = None,
    end: EndDay = None,
) -> Page[Activity]:
    rows, total = await repository.list_activities(
        session,
        user_id=user_id,
        activity_type=activity_type,
        days=date_range(start, end),
        skip=skip,
        limit=limit,
    )
    items = [Activity.model_validate(row, from_attributes=True) for row in rows]
    return Page(items=items, total=total, skip=skip, limit=limit)


@readers.get("/users/top")
async def top_users(
    session: DbSession,
    by: UsersRankedBy = "messages",
    limit: Limit = 10,
    skip: Skip = 0,
    days: Annotated[
        int | None, Query(ge=1, le=MAX_DAYS, description="Only the last N days; all time if unset.")
    ] = None,
) -> Page[TopUser]:
    since = None if days is None else datetime.now(UTC).date() - timedelta(days=days - 1)
    rows, total = await repository.top_users(session, by=by, since=since, skip=skip, limit=limit)
    items = [
        TopUser(
            user_id=r["user_id"],
            username=r["username"],
            user_messages=int(r["user_messages"]),
            replies=int(r["replies"]),
            prompt_tokens=int(r["prompt_tokens"]),
            completion_tokens=int(r["completion_tokens"]),
            total_tokens=int(r["total_tokens"]),
            cost_usd=money(r["cost_usd"]),
        )
        for r in rows
    ]
    return Page(items=items, total=total, skip=skip, limit=limit)


@readers.get("/users/list")
async def users_list(
    session: DbSession,
    active_only: bool = False,
    q: Annotated[str | None, Query(max_length=150, description="Username contains.")] = None,
    skip: Skip = 0,
    limit: ReportLimit = 50,
) -> Page[UserRow]:
    rows, total = await repository.list_users(
        session, active_only=active_only, q=q, skip=skip, limit=limit
    )
    items = [
        UserRow(
            user_id=u.user_id,
            username=u.username,
            roles=list(u.roles or []),
            is_active=u.is_active,
            registered_at=u.registered_at,
            first_seen_at=u.first_seen_at,
            last_seen_at=u.last_seen_at,
            last_login_at=u.last_login_at,
            logins=u.logins,
            conversations=u.conversations,
            user_messages=u.user_messages,
            replies=u.replies,
            total_tokens=u.prompt_tokens + u.completion_tokens,
            cost_usd=money(u.cost_usd),
        )
        for u in rows
    ]
    return Page(items=items, total=total, skip=skip, limit=limit)


@readers.get("/conversations")
async def conversations(
    session: DbSession,
    start: StartDay = None,
    end: EndDay = None,
    user_id: Annotated[str | None, Query(max_length=64)] = None,
    skip: Skip = 0,
    limit: ReportLimit = 50,
) -> Page[ConversationRow]:
    rows, total = await repository.list_conversations(
        session, user_id=user_id, days=date_range(start, end), skip=skip, limit=limit
    )
    items = [
        ConversationRow(
            conversation_id=c.conversation_id,
            user_id=c.user_id,
            model=c.model,
            started_at=c.started_at,
            last_activity_at=c.last_activity_at,
            ended_at=c.ended_at,
            deleted_at=c.deleted_at,
            user_messages=c.user_messages,
            replies_completed=c.replies_completed,
            replies_failed=c.replies_failed,
            replies_cancelled=c.replies_cancelled,
            prompt_tokens=c.prompt_tokens,
            completion_tokens=c.completion_tokens,
            total_tokens=c.prompt_tokens + c.completion_tokens,
            cost_usd=money(c.cost_usd),
            avg_response_time_ms=_avg(c.reply_duration_ms_total, c.replies_completed),
            avg_ttft_ms=_avg(c.ttft_ms_total, c.replies_completed),
        )
        for c in rows
    ]
    return Page(items=items, total=total, skip=skip, limit=limit)


@readers.get("/api-usage")
async def api_usage(
    session: DbSession,
    start: StartDay = None,
    end: EndDay = None,
    service: Annotated[str | None, Query(max_length=64)] = None,
    skip: Skip = 0,
    limit: ReportLimit = 50,
) -> Page[ApiUsageRow]:
    rows, total = await repository.api_usage(
        session, service=service, days=date_range(start, end), skip=skip, limit=limit
    )
    items = []
    for r in rows:
        calls = int(r["calls"])
        server_errors = int(r["server_errors"] or 0)
        items.append(
            ApiUsageRow(
                service=r["service"],
                route=r["route"],
                method=r["method"],
                calls=calls,
                server_errors=server_errors,
                client_errors=int(r["client_errors"] or 0),
                error_rate=_rate(server_errors, calls),
                avg_latency_ms=float(r["duration_ms_total"]) / calls,
                max_latency_ms=float(r["max_latency_ms"]),
            )
        )
    return Page(items=items, total=total, skip=skip, limit=limit)


@readers.get("/models")
async def model_stats(
    session: DbSession,
    prices: Annotated[PriceTable, Depends(_prices)],
    start: StartDay = None,
    end: EndDay = None,
    skip: Skip = 0,
    limit: ReportLimit = 50,
) -> Page[ModelRow]:
    """Per model over the date range; time-to-first-token percentiles are lifetime."""
    rows = await repository.model_usage(session, date_range(start, end))
    percentiles = await repository.ttft_percentiles(session)
    items = []
    for r in rows:
        price = prices.price_of(r["model"])
        completed = int(r["replies_completed"])
        ttft = percentiles.get(r["model"])
        items.append(
            ModelRow(
                model=r["model"],
                replies_completed=completed,
                replies_failed=int(r["replies_failed"]),
                replies_cancelled=int(r["replies_cancelled"]),
                prompt_tokens=int(r["prompt_tokens"]),
                completion_tokens=int(r["completion_tokens"]),
                total_tokens=int(r["prompt_tokens"]) + int(r["completion_tokens"]),
                **estimated_counts(r),
                cost_usd=money(r["cost_usd"]),
                price_known=price is not None,
                unpriced_replies=int(r["unpriced_replies"]),
                input_usd_per_million=float(price.input_per_million) if price else None,
                output_usd_per_million=float(price.output_per_million) if price else None,
                avg_duration_ms=_avg(float(r["reply_duration_ms_total"]), completed),
                avg_ttft_ms=_avg(float(r["ttft_ms_total"]), completed),
                ttft_p50_ms=ttft.p50 if ttft else None,
                ttft_p95_ms=ttft.p95 if ttft else None,
            )
        )
    items.sort(key=lambda m: (-m.total_tokens, m.model))
    return Page(items=items[skip : skip + limit], total=len(items), skip=skip, limit=limit)


@readers.post(
    "/track/activity",
    status_code=status.HTTP_201_CREATED,
    dependencies=[require_roles(Role.ADMIN)],
)
async def track_activity(body: TrackActivity, session: DbSession) -> Activity:
    values: dict[str, Any] = body.model_dump()
    values["occurred_at"] = body.occurred_at or datetime.now(UTC)
    activity = await repository.add_activity(session, values)
    return Activity.model_validate(activity, from_attributes=True)

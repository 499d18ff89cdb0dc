"""Dashboard API, the per-day series: `/daily-stats` and `/ttft-daily`, newest day first, one row
for every day of the window, zero-filled (or null) where nothing happened."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

from fastapi import HTTPException, Query, status

from services.analytics_consumer import repository
from services.analytics_consumer.api import MAX_DAYS, DbSession, readers_router
from services.analytics_consumer.repository import ESTIMATED_COLUMNS, DateRange, money
from services.analytics_consumer.schemas import DailyRow, TtftDay
from shared.pagination import Page

readers = readers_router()


@readers.get("/daily-stats")
async def daily_stats(
    session: DbSession,
    days: Annotated[int, Query(ge=1, le=MAX_DAYS)] = 30,
    end: Annotated[date | None, Query(description="Last UTC day (default today).")] = None,
    skip: Annotated[int, Query(ge=0, le=MAX_DAYS)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_DAYS)] = MAX_DAYS,
) -> Page[DailyRow]:
    """One row per day, newest first, zero-filled where nothing happened."""
    first, last = _window(end, days)
    stored = await repository.daily_stats(session, first, last)
    wanted = [last - timedelta(days=i) for i in range(days)][skip : skip + limit]
    return Page(
        items=[_daily_row(day, stored.get(day)) for day in wanted],
        total=days,
        skip=skip,
        limit=limit,
    )


@readers.get("/ttft-daily")
async def ttft_daily(
    session: DbSession,
    days: Annotated[int, Query(ge=1, le=MAX_DAYS)] = 30,
    end: Annotated[date | None, Query(description="Last UTC day (default today).")] = None,
    skip: Annotated[int, Query(ge=0, le=MAX_DAYS)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_DAYS)] = MAX_DAYS,
) -> Page[TtftDay]:
    """Time-to-first-token p50/p95 per day, newest first (null where no reply completed)."""
    first, last = _window(end, days)
    stored = await repository.ttft_by_day(session, DateRange(first, last))
    wanted = [last - timedelta(days=i) for i in range(days)][skip : skip + limit]
    items = []
    for day in wanted:
        row = stored.get(day)
        items.append(
            TtftDay(
                date=day,
                replies=row["replies"] if row else 0,
                ttft_p50_ms=row["p50"] if row else None,
                ttft_p95_ms=row["p95"] if row else None,
            )
        )
    return Page(items=items, total=days, skip=skip, limit=limit)


def _window(end: date | None, days: int) -> tuple[date, date]:
    """The first and last day of the `days`-day window that ends on `end` (default today); 422
    for a window that would start before the calendar's first day (found by the fuzzer)."""
    last = end or datetime.now(UTC).date()
    if last.toordinal() < days:  # date.min, 0001-01-01, is ordinal 1
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=f"a {days}-day window ending on {last} would start before 0001-01-01",
        )
    return last - timedelta(days=days - 1), last


_DAILY_COUNTS = tuple(
    name for name, field in DailyRow.model_fields.items() if field.annotation is int
)
"""The integer counts of a day's row (`DailyRow`'s int fields)."""


def _daily_row(day: date, row: Any) -> DailyRow:
    if row is None:
        # A day without a row: every count of the schema is 0, nothing to average.
        return DailyRow(
            date=day,
            **dict.fromkeys(_DAILY_COUNTS, 0),
            cost_usd=0.0,
            avg_response_time_ms=None,
        )
    return DailyRow(
        date=day,
        new_users=row.new_users,
        active_users=row.active_users,
        logins=row.logins,
        failed_logins=row.failed_logins,
        conversations=row.conversations_created,
        user_messages=row.user_messages,
        replies_completed=row.replies_completed,
        replies_failed=row.replies_failed,
        replies_cancelled=row.replies_cancelled,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        total_tokens=row.prompt_tokens + row.completion_tokens,
        **{name: getattr(row, name) for name in ESTIMATED_COLUMNS},
        cost_usd=money(row.cost_usd),
        avg_response_time_ms=(
            row.reply_duration_ms_total / row.replies_completed if row.replies_completed else None
        ),
        api_calls=row.api_calls,
        api_server_errors=row.api_server_errors,
    )

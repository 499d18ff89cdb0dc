"""HTTP edge of the ledger, served by the gateway: a user's own usage, an admin's limits for a
user or an API key, and everyone's usage for an admin."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Request, status
from pydantic import BaseModel, ConfigDict, Field

from services.auth.key_lookup import owner_of_key_id
from services.budgets import ledger
from services.budgets.usage import OwnerUsage, SubjectUsage, everyones_usage, usage_of
from shared.outbox import Outbox
from shared.pagination import Limit, Page, Skip
from shared.security import CurrentPrincipal, Principal, Role, require_roles

router = APIRouter(tags=["budgets"])

SubjectId = Annotated[str, Path(min_length=1, max_length=16)]


class LimitsIn(BaseModel):
    """Replaces every limit of the user or key: a missing or null field means no limit."""

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: int | None = Field(default=None, ge=0, le=1_000_000)
    tokens_per_day: int | None = Field(default=None, ge=0, le=10**12)
    cost_per_month_usd: float | None = Field(default=None, ge=0, le=10**9)


class SubjectUsageOut(BaseModel):
    requests_per_minute: int | None = Field(
        description="The admin's limit; none for a user: the door's default applies"
    )
    tokens_per_day: int | None
    cost_per_month_usd: float | None
    requests_this_minute: int
    requests_today: int
    used_tokens_today: int
    reserved_tokens_today: int = Field(description="Worst cases of requests still being answered")
    remaining_tokens_today: int | None
    used_tokens_this_month: int
    used_usd_this_month: float
    reserved_usd_this_month: float
    remaining_usd_this_month: float | None


class KeyUsageOut(SubjectUsageOut):
    key_id: str


class UsageOut(SubjectUsageOut):
    """Days and months are UTC; a day's budget resets at 00:00, a month's on the 1st."""

    user_id: str
    keys: list[KeyUsageOut] = Field(description="The user's API keys with limits or use")


def _amounts(usage: SubjectUsage) -> SubjectUsageOut:
    return SubjectUsageOut(
        requests_per_minute=usage.requests_per_minute,
        tokens_per_day=usage.tokens_per_day,
        cost_per_month_usd=_usd(usage.cost_per_month_usd),
        requests_this_minute=usage.requests_this_minute,
        requests_today=usage.requests_today,
        used_tokens_today=usage.used_tokens_today,
        reserved_tokens_today=usage.reserved_tokens_today,
        remaining_tokens_today=usage.remaining_tokens_today,
        used_tokens_this_month=usage.used_tokens_this_month,
        used_usd_this_month=float(usage.used_usd_this_month),
        reserved_usd_this_month=float(usage.reserved_usd_this_month),
        remaining_usd_this_month=_usd(usage.remaining_usd_this_month),
    )


def _usd(amount: Decimal | None) -> float | None:
    return None if amount is None else float(amount)


def _out(usage: OwnerUsage) -> UsageOut:
    keys = [KeyUsageOut(key_id=key.subject_id, **_amounts(key).model_dump()) for key in usage.keys]
    return UsageOut(user_id=usage.user.subject_id, keys=keys, **_amounts(usage.user).model_dump())


def _outbox(request: Request) -> Outbox:
    outbox: Outbox = request.app.state.outbox
    return outbox


OutboxDep = Annotated[Outbox, Depends(_outbox)]
Admin = Annotated[Principal, require_roles(Role.ADMIN)]


async def _usage(outbox: Outbox, user_id: str) -> UsageOut:
    async with outbox.unit_of_work() as session:
        (usage,) = await usage_of(session, [user_id])
    return _out(usage)


async def _set_limits(outbox: Outbox, subject_id: str, owner_id: str, body: LimitsIn) -> None:
    cost = body.cost_per_month_usd
    async with outbox.unit_of_work() as session:
        await ledger.set_limits(
            session,
            subject_id,
            owner_id,
            requests_per_minute=body.requests_per_minute,
            tokens_per_day=body.tokens_per_day,
            cost_per_month_usd=None if cost is None else Decimal(str(cost)),
        )


@router.get("/me/usage", response_model=UsageOut)
async def my_usage(principal: CurrentPrincipal, outbox: OutboxDep) -> UsageOut:
    return await _usage(outbox, principal.user_id)


@router.get("/admin/budgets", response_model=Page[UsageOut])
async def everyones(
    outbox: OutboxDep, _admin: Admin, skip: Skip = 0, limit: Limit = 50
) -> Page[UsageOut]:
    """Every user with limits or use this month, with their keys."""
    async with outbox.unit_of_work() as session:
        page, total = await everyones_usage(session, skip, limit)
    return Page(items=[_out(usage) for usage in page], total=total, skip=skip, limit=limit)


@router.put("/admin/budgets/keys/{key_id}", response_model=UsageOut)
async def set_key_limits(
    key_id: SubjectId, body: LimitsIn, outbox: OutboxDep, _admin: Admin
) -> UsageOut:
    """Limits of one API key, on top of its owner's; answers with the owner's usage."""
    async with outbox.unit_of_work() as session:
        owner = await owner_of_key_id(session, key_id)
    if owner is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "API key not found")
    await _set_limits(outbox, key_id, owner, body)
    return await _usage(outbox, owner)


@router.put("/admin/budgets/{user_id}", response_model=UsageOut)
async def set_user_limits(
    user_id: SubjectId, body: LimitsIn, outbox: OutboxDep, _admin: Admin
) -> UsageOut:
    await _set_limits(outbox, user_id, user_id, body)
    return await _usage(outbox, user_id)


@router.get("/admin/budgets/{user_id}", response_model=UsageOut)
async def user_usage(user_id: SubjectId, outbox: OutboxDep, _admin: Admin) -> UsageOut:
    return await _usage(outbox, user_id)

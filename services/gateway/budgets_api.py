"""HTTP edge of the budget ledger (services/budgets): a user's own usage, an admin's limits for
a user or one of their API keys, and everyone's usage for an admin."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

import httpx
from fastapi import APIRouter, Depends, HTTPException, Path, Request, status
from pydantic import BaseModel, ConfigDict, Field

from services.budgets import ledger
from services.budgets.usage import OwnerUsage, SubjectUsage, everyones_usage, usage_of
from services.gateway.context import Gateway, gateway_dependency
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


GatewayDep = Annotated[Gateway, Depends(gateway_dependency)]
Admin = Annotated[Principal, require_roles(Role.ADMIN)]


async def _usage(gw: Gateway, user_id: str) -> UsageOut:
    async with gw.unit_of_work() as session:
        (usage,) = await usage_of(session, [user_id])
    return _out(usage)


async def _set_limits(gw: Gateway, subject_id: str, owner_id: str, body: LimitsIn) -> None:
    cost = body.cost_per_month_usd
    async with gw.unit_of_work() as session:
        await ledger.set_limits(
            session,
            subject_id,
            owner_id,
            requests_per_minute=body.requests_per_minute,
            tokens_per_day=body.tokens_per_day,
            cost_per_month_usd=None if cost is None else Decimal(str(cost)),
        )


@router.get("/me/usage", response_model=UsageOut)
async def my_usage(principal: CurrentPrincipal, gw: GatewayDep) -> UsageOut:
    return await _usage(gw, principal.user_id)


@router.get("/admin/budgets", response_model=Page[UsageOut])
async def everyones(
    gw: GatewayDep, _admin: Admin, skip: Skip = 0, limit: Limit = 50
) -> Page[UsageOut]:
    """Every user with limits or use this month, with their keys."""
    async with gw.unit_of_work() as session:
        page, total = await everyones_usage(session, skip, limit)
    return Page(items=[_out(usage) for usage in page], total=total, skip=skip, limit=limit)


@router.put("/admin/budgets/{user_id}/keys/{key_id}", response_model=UsageOut)
async def set_key_limits(
    user_id: SubjectId,
    key_id: SubjectId,
    body: LimitsIn,
    gw: GatewayDep,
    request: Request,
    _admin: Admin,
) -> UsageOut:
    """Limits of one of the user's API keys, on top of the user's own."""
    if not await _holds_key(gw, request.headers["authorization"], user_id, key_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "API key not found")
    await _set_limits(gw, key_id, user_id, body)
    return await _usage(gw, user_id)


async def _holds_key(gw: Gateway, authorization: str, user_id: str, key_id: str) -> bool:
    """Whether auth lists `key_id` among the user's keys (revoked ones too), asked with the
    admin's own credentials: auth alone reads its schema."""
    try:
        async with httpx.AsyncClient(base_url=gw.settings.auth_url, timeout=5.0) as client:
            response = await client.get(
                "/admin/api-keys",
                params={"user_id": user_id},
                headers={"Authorization": authorization},
            )
    except httpx.HTTPError:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "auth is unreachable") from None
    if response.status_code != status.HTTP_200_OK:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "auth did not list the keys")
    return any(key.get("id") == key_id for key in response.json())


@router.put("/admin/budgets/{user_id}", response_model=UsageOut)
async def set_user_limits(
    user_id: SubjectId, body: LimitsIn, gw: GatewayDep, _admin: Admin
) -> UsageOut:
    await _set_limits(gw, user_id, user_id, body)
    return await _usage(gw, user_id)


@router.get("/admin/budgets/{user_id}", response_model=UsageOut)
async def user_usage(user_id: SubjectId, gw: GatewayDep, _admin: Admin) -> UsageOut:
    return await _usage(gw, user_id)

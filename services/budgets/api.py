"""HTTP edge of the ledger, served by the gateway: a user's own usage, an admin's limits."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from services.budgets import ledger
from shared.outbox import Outbox
from shared.security import CurrentPrincipal, Principal, Role, require_roles

router = APIRouter(tags=["budgets"])


class LimitsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests_per_minute: int | None = Field(default=None, ge=0, le=1_000_000)
    tokens_per_day: int | None = Field(default=None, ge=0, le=10**12)


class UsageOut(BaseModel):
    user_id: str
    used_tokens_today: int
    reserved_tokens_today: int
    requests_today: int
    tokens_per_day: int | None
    remaining_tokens_today: int | None
    requests_per_minute: int | None


def _outbox(request: Request) -> Outbox:
    outbox: Outbox = request.app.state.outbox
    return outbox


OutboxDep = Annotated[Outbox, Depends(_outbox)]


async def _usage(outbox: Outbox, user_id: str) -> UsageOut:
    async with outbox.unit_of_work() as session:
        usage = await ledger.usage_today(session, user_id)
    return UsageOut(
        user_id=user_id,
        used_tokens_today=usage.used_tokens,
        reserved_tokens_today=usage.reserved_tokens,
        requests_today=usage.requests,
        tokens_per_day=usage.tokens_per_day,
        remaining_tokens_today=usage.remaining_tokens,
        requests_per_minute=usage.requests_per_minute,
    )


@router.get("/me/usage", response_model=UsageOut)
async def my_usage(principal: CurrentPrincipal, outbox: OutboxDep) -> UsageOut:
    return await _usage(outbox, principal.user_id)


@router.put("/admin/budgets/{user_id}", response_model=UsageOut)
async def set_user_limits(
    user_id: Annotated[str, Field(max_length=16)],
    body: LimitsIn,
    outbox: OutboxDep,
    _admin: Principal = require_roles(Role.ADMIN),
) -> UsageOut:
    async with outbox.unit_of_work() as session:
        await ledger.set_limits(session, user_id, body.requests_per_minute, body.tokens_per_day)
    return await _usage(outbox, user_id)


@router.get("/admin/budgets/{user_id}", response_model=UsageOut)
async def user_usage(
    user_id: str, outbox: OutboxDep, _admin: Principal = require_roles(Role.ADMIN)
) -> UsageOut:
    return await _usage(outbox, user_id)

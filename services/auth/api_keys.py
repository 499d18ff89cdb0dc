"""API keys for the OpenAI-compatible API: create (secret shown once), list, revoke.

A user manages their own keys; an admin lists and revokes anyone's. Only the SHA-256 of the
secret is stored. Each change stages `api_key.created` / `api_key.revoked` in the same
transaction. A gateway learns who holds a key by asking `GET /api-keys/current` with the key as
the bearer (auth alone reads its schema); it may keep the answer for a short while and forgets it
when `api_key.revoked` (or a revocation of the owner) reaches it through the revocation stream.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select, update

from services.auth.events import PRODUCER
from services.auth.key_lookup import hash_secret, owner_of_key
from services.auth.models import API_KEY_NAME_MAX_LENGTH, API_KEY_PREFIX, ApiKey, User
from shared.events import ApiKeyCreated, ApiKeyRevoked
from shared.ids import IdKind, is_valid_id, new_id
from shared.outbox import Outbox
from shared.security import CurrentPrincipal, Principal, Role, require_roles

SECRET_BYTES = 32
LISTED_PREFIX_LENGTH = 12
MAX_KEYS_PER_USER = 100

router = APIRouter(tags=["api keys"])


def new_secret() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(SECRET_BYTES)


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=API_KEY_NAME_MAX_LENGTH)
    expires_at: datetime | None = None
    store_content: bool = False
    """Keep request and reply contents after the reply is done (default: blanked)."""


class ApiKeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    user_id: str
    name: str
    prefix: str
    store_content: bool
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated201(ApiKeyOut):
    secret: str
    """Shown only in this answer; ConvoAI keeps its hash."""


class KeyHolder(BaseModel):
    """Who holds a key, as a gateway needs it to serve the OpenAI-compatible API."""

    key_id: str
    user_id: str
    username: str
    roles: list[str]
    store_content: bool
    expires_at: datetime | None


def _outbox(request: Request) -> Outbox:
    outbox: Outbox = request.app.state.outbox
    return outbox


OutboxDep = Annotated[Outbox, Depends(_outbox)]


@router.post("/api-keys", status_code=status.HTTP_201_CREATED, response_model=ApiKeyCreated201)
async def create_key(
    body: ApiKeyCreate, principal: CurrentPrincipal, outbox: OutboxDep
) -> ApiKeyCreated201:
    if body.expires_at is not None:
        if body.expires_at.tzinfo is None:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "expires_at needs a zone")
        if body.expires_at <= datetime.now(UTC):
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "expires_at is past")
    secret = new_secret()
    key = ApiKey(
        id=new_id(IdKind.API_KEY),
        user_id=principal.user_id,
        name=body.name,
        prefix=secret[:LISTED_PREFIX_LENGTH],
        secret_hash=hash_secret(secret),
        store_content=body.store_content,
        expires_at=body.expires_at,
    )
    async with outbox.unit_of_work() as session:
        # A token can outlive its account by a moment (deleted or deactivated since it was
        # issued): no key for it, and a clear 401 instead of a foreign-key error.
        owner = await session.get(User, principal.user_id)
        if owner is None or not owner.is_active:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "Account no longer active")
        count = len(
            (
                await session.execute(
                    select(ApiKey.id).where(
                        ApiKey.user_id == principal.user_id, ApiKey.revoked_at.is_(None)
                    )
                )
            ).all()
        )
        if count >= MAX_KEYS_PER_USER:
            raise HTTPException(status.HTTP_409_CONFLICT, "Too many active keys; revoke one")
        session.add(key)
        await session.flush()
        await session.refresh(key)
        await outbox.stage(
            session,
            ApiKeyCreated(
                producer=PRODUCER,
                user_id=principal.user_id,
                key_id=key.id,
                name=key.name,
                prefix=key.prefix,
                expires_at=key.expires_at,
                store_content=key.store_content,
            ),
        )
    return ApiKeyCreated201(**ApiKeyOut.model_validate(key).model_dump(), secret=secret)


@router.get(
    "/api-keys/current",
    response_model=KeyHolder,
    responses={401: {"description": "Not an active key of an active account"}},
)
async def current_key(
    outbox: OutboxDep, authorization: Annotated[str | None, Header()] = None
) -> KeyHolder:
    """The holder of the key sent as the bearer: how a gateway checks an API key."""
    scheme, _, secret = (authorization or "").partition(" ")
    async with outbox.unit_of_work() as session:
        owner = await owner_of_key(session, secret.strip()) if scheme.lower() == "bearer" else None
    if owner is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "Invalid, revoked or expired API key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return KeyHolder(
        key_id=owner.key_id,
        user_id=owner.user_id,
        username=owner.username,
        roles=sorted(owner.roles),
        store_content=owner.store_content,
        expires_at=owner.expires_at,
    )


@router.get("/api-keys", response_model=list[ApiKeyOut])
async def list_own_keys(principal: CurrentPrincipal, outbox: OutboxDep) -> list[ApiKeyOut]:
    return await _list(outbox, principal.user_id)


@router.delete("/api-keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_own_key(key_id: str, principal: CurrentPrincipal, outbox: OutboxDep) -> None:
    await _revoke(outbox, key_id, principal, owner_id=principal.user_id)


@router.get("/admin/api-keys", response_model=list[ApiKeyOut])
async def list_keys_admin(
    outbox: OutboxDep,
    _admin: Principal = require_roles(Role.ADMIN),
    user_id: Annotated[str | None, Query(max_length=16)] = None,
) -> list[ApiKeyOut]:
    return await _list(outbox, user_id)


@router.delete("/admin/api-keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_key_admin(
    key_id: str, outbox: OutboxDep, admin: Principal = require_roles(Role.ADMIN)
) -> None:
    await _revoke(outbox, key_id, admin, owner_id=None)


async def _list(outbox: Outbox, user_id: str | None) -> list[ApiKeyOut]:
    query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.id).limit(1000)
    if user_id is not None:
        query = query.where(ApiKey.user_id == user_id)
    async with outbox.unit_of_work() as session:
        keys = (await session.execute(query)).scalars().all()
        return [ApiKeyOut.model_validate(k) for k in keys]


async def _revoke(outbox: Outbox, key_id: str, actor: Principal, owner_id: str | None) -> None:
    """Idempotent: revoking a revoked key changes nothing and sends no second event."""
    if not is_valid_id(key_id, IdKind.API_KEY):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "API key not found")
    async with outbox.unit_of_work() as session:
        query = select(ApiKey).where(ApiKey.id == key_id)
        if owner_id is not None:
            query = query.where(ApiKey.user_id == owner_id)
        key = (await session.execute(query)).scalar_one_or_none()
        if key is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "API key not found")
        revoked = await session.execute(
            update(ApiKey)
            .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
            .values(revoked_at=datetime.now(UTC))
            .returning(ApiKey.id)
        )
        if revoked.first() is not None:
            await outbox.stage(
                session,
                ApiKeyRevoked(
                    producer=PRODUCER, user_id=key.user_id, key_id=key_id, actor_id=actor.user_id
                ),
            )

"""Who a bearer of the OpenAI-compatible API is: auth's read model, used by the gateway.

Auth owns the `auth` schema; this module is the one query other services may run against it,
so the rule "a key counts only while it is unrevoked, unexpired and its owner active" lives
with its owner. It runs on every API request (one indexed lookup, no cache): a revoked key or a
deactivated owner is refused by every gateway from the moment the change commits.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.auth.api_keys import hash_secret
from services.auth.models import API_KEY_PREFIX

MAX_SECRET_LENGTH = 128


@dataclass(frozen=True)
class KeyOwner:
    user_id: str
    username: str
    roles: frozenset[str]
    key_id: str | None
    store_content: bool


_BY_KEY = text(
    """
    SELECT k.id AS key_id, k.store_content, u.id AS user_id, u.username, u.roles
    FROM auth.api_keys k JOIN auth.users u ON u.id = k.user_id
    WHERE k.secret_hash = :hash AND k.revoked_at IS NULL
      AND (k.expires_at IS NULL OR k.expires_at > now()) AND u.is_active
    """
)
_ACTIVE_USER = text("SELECT id, username, roles FROM auth.users WHERE id = :id AND is_active")


def looks_like_key(bearer: str) -> bool:
    return bearer.startswith(API_KEY_PREFIX)


async def owner_of_key(session: AsyncSession, secret: str) -> KeyOwner | None:
    if not looks_like_key(secret) or len(secret) > MAX_SECRET_LENGTH:
        return None
    row = (await session.execute(_BY_KEY, {"hash": hash_secret(secret)})).first()
    if row is None:
        return None
    return KeyOwner(row.user_id, row.username, frozenset(row.roles), row.key_id, row.store_content)


async def active_user(session: AsyncSession, user_id: str) -> KeyOwner | None:
    """The user behind an access token, if still active (a token outlives a deactivation)."""
    row = (await session.execute(_ACTIVE_USER, {"id": user_id})).first()
    if row is None:
        return None
    return KeyOwner(row.id, row.username, frozenset(row.roles), None, False)


_OWNER_OF_KEY_ID = text("SELECT user_id FROM auth.api_keys WHERE id = :id")


async def owner_of_key_id(session: AsyncSession, key_id: str) -> str | None:
    """Whose key `key_id` is (revoked or not): an admin's per-key limits are listed with it."""
    owner: str | None = await session.scalar(_OWNER_OF_KEY_ID, {"id": key_id})
    return owner

"""The one rule for "does this API key count": unrevoked, unexpired, its owner active.

Auth alone reads its schema; gateways ask `GET /api-keys/current` (services/auth/api_keys.py),
which runs this one indexed lookup.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from services.auth.models import API_KEY_PREFIX

MAX_SECRET_LENGTH = 128


def hash_secret(secret: str) -> str:
    """What is stored of a key: 256 random bits need no slow hash."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class KeyOwner:
    key_id: str
    user_id: str
    username: str
    roles: frozenset[str]
    store_content: bool
    expires_at: datetime | None


_BY_KEY = text(
    """
    SELECT k.id AS key_id, k.store_content, k.expires_at, u.id AS user_id, u.username, u.roles
    FROM auth.api_keys k JOIN auth.users u ON u.id = k.user_id
    WHERE k.secret_hash = :hash AND k.revoked_at IS NULL
      AND (k.expires_at IS NULL OR k.expires_at > now()) AND u.is_active
    """
)


async def owner_of_key(session: AsyncSession, secret: str) -> KeyOwner | None:
    if not secret.startswith(API_KEY_PREFIX) or len(secret) > MAX_SECRET_LENGTH:
        return None
    row = (await session.execute(_BY_KEY, {"hash": hash_secret(secret)})).first()
    if row is None:
        return None
    return KeyOwner(
        row.key_id,
        row.user_id,
        row.username,
        frozenset(row.roles),
        row.store_content,
        row.expires_at,
    )

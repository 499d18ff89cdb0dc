"""Who holds an API key, as auth says: asked over HTTP, kept briefly, forgotten on revocation.

Auth alone reads its schema. The gateway asks `GET {auth_url}/api-keys/current` with the key as
the bearer, and keeps a positive answer for at most `api_key_cache_s` (never past the key's
expiry), indexed by the SHA-256 of the secret (the secret itself is not kept). A revoked key, or a
revocation of its owner (deactivated, deleted, role changed, signed out everywhere), reaches every
gateway through the revocation stream within milliseconds and drops the entry, so the next request
asks auth again and is refused. While that stream is behind (just after a broker reconnect) the
cache is not trusted: every request asks auth.

Refusals are not kept: a client sending bad keys costs one indexed lookup in auth per request
(there is no per-address limit in front of `/v1` yet).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import httpx

from shared.events import ApiKeyRevoked
from shared.revocations import RevocationList

log = logging.getLogger(__name__)

API_KEY_PREFIX = "cvai-"
"""What a key looks like (auth's format); anything else is treated as an access token."""
MAX_SECRET_LENGTH = 128
MAX_CACHED_KEYS = 10_000
AUTH_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class KeyOwner:
    """The caller of the OpenAI-compatible API: a key's holder, or a token's user (no key)."""

    user_id: str
    username: str
    roles: frozenset[str]
    key_id: str | None
    store_content: bool


class AuthUnavailable(Exception):
    """Auth did not answer: the caller gets a 503, not a 401."""


@dataclass
class _Entry:
    owner: KeyOwner
    valid_until: float


def looks_like_key(bearer: str) -> bool:
    return bearer.startswith(API_KEY_PREFIX)


class ApiKeyDirectory:
    def __init__(
        self,
        auth_url: str,
        revocations: RevocationList,
        *,
        cache_s: float,
        clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._revocations = revocations
        self._cache_s = cache_s
        self._clock = clock
        self._client = httpx.AsyncClient(
            base_url=auth_url.rstrip("/"), timeout=AUTH_TIMEOUT_S, transport=transport
        )
        self._entries: dict[str, _Entry] = {}
        self.lookups = 0
        """Questions sent to auth (a test and the metrics see the cache at work)."""

    async def owner_of(self, secret: str) -> KeyOwner | None:
        """The key's holder, or None when auth refuses it; `AuthUnavailable` when auth is down."""
        if not looks_like_key(secret) or len(secret) > MAX_SECRET_LENGTH:
            return None
        digest = hashlib.sha256(secret.encode()).hexdigest()
        now = self._clock()
        entry = self._entries.get(digest)
        if entry is not None and entry.valid_until > now and self._revocations.current:
            return entry.owner
        self._entries.pop(digest, None)
        owner, expires_at = await self._ask_auth(secret)
        if owner is None:
            return None
        valid_until = now + self._cache_s
        if expires_at is not None:
            valid_until = min(valid_until, expires_at.timestamp())
        if len(self._entries) >= MAX_CACHED_KEYS:
            self._entries.pop(next(iter(self._entries)))  # the oldest answer
        self._entries[digest] = _Entry(owner, valid_until)
        return owner

    def forget_key(self, event: ApiKeyRevoked) -> None:
        for digest, entry in list(self._entries.items()):
            if entry.owner.key_id == event.key_id:
                del self._entries[digest]

    def forget_user(self, user_id: str) -> None:
        for digest, entry in list(self._entries.items()):
            if entry.owner.user_id == user_id:
                del self._entries[digest]

    async def close(self) -> None:
        await self._client.aclose()

    async def _ask_auth(self, secret: str) -> tuple[KeyOwner | None, datetime | None]:
        self.lookups += 1
        try:
            response = await self._client.get(
                "/api-keys/current", headers={"Authorization": f"Bearer {secret}"}
            )
        except httpx.HTTPError as exc:
            log.warning("auth unreachable for an API key check", extra={"error": repr(exc)[:200]})
            raise AuthUnavailable("auth is not answering") from None
        if response.status_code == 401:
            return None, None
        if response.status_code != 200:
            log.warning("auth refused an API key check", extra={"status": response.status_code})
            raise AuthUnavailable(f"auth answered {response.status_code}")
        body = response.json()
        expires_at = body.get("expires_at")
        owner = KeyOwner(
            user_id=body["user_id"],
            username=body["username"],
            roles=frozenset(body["roles"]),
            key_id=body["key_id"],
            store_content=bool(body["store_content"]),
        )
        return owner, datetime.fromisoformat(expires_at) if expires_at else None

"""Who calls the OpenAI-compatible API: an API key (`cvai-…`) or a user's access token.

Both are checked against auth's tables on every request (services.auth.key_lookup), not cached:
a revoked key, an expired one or a deactivated owner is refused by every gateway as soon as the
change commits.
"""

from __future__ import annotations

from services.auth.key_lookup import KeyOwner, active_user, looks_like_key, owner_of_key
from services.gateway.context import Gateway
from shared.security import InvalidToken


class CallerRefused(Exception):
    """No valid bearer: 401."""


async def resolve_caller(gw: Gateway, authorization: str | None) -> KeyOwner:
    scheme, _, bearer = (authorization or "").partition(" ")
    bearer = bearer.strip()
    if scheme.lower() != "bearer" or not bearer:
        raise CallerRefused("Missing bearer API key")
    async with gw.unit_of_work() as session:
        if looks_like_key(bearer):
            owner = await owner_of_key(session, bearer)
            if owner is None:
                raise CallerRefused("Invalid, revoked or expired API key")
            return owner
        try:
            principal = gw.verifier.verify_access(bearer)
        except InvalidToken:
            raise CallerRefused("Invalid or expired access token") from None
        owner = await active_user(session, principal.user_id)
        if owner is None:
            raise CallerRefused("Account is deactivated")
        return owner

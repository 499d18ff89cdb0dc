"""Who calls the OpenAI-compatible API: an API key (`cvai-…`) or a user's access token.

A key is checked with auth (services/gateway/api_keys.py: asked over HTTP, kept briefly,
forgotten when the revocation stream says the key or its owner was revoked). An access token is
checked like on every other door: signature, expiry and the revocation list.
"""

from __future__ import annotations

from services.gateway.api_keys import AuthUnavailable, KeyOwner, looks_like_key
from services.gateway.context import Gateway
from shared.security import InvalidToken, RevocationStateBehind, RevokedToken


class CallerRefused(Exception):
    """No valid bearer: 401."""


class CallerUncheckable(Exception):
    """The bearer cannot be checked right now (auth down, revocations catching up): 503."""


async def resolve_caller(gw: Gateway, authorization: str | None) -> KeyOwner:
    scheme, _, bearer = (authorization or "").partition(" ")
    bearer = bearer.strip()
    if scheme.lower() != "bearer" or not bearer:
        raise CallerRefused("Missing bearer API key")
    if looks_like_key(bearer):
        try:
            owner = await gw.api_keys.owner_of(bearer)
        except AuthUnavailable:
            raise CallerUncheckable("The key cannot be checked right now") from None
        if owner is None:
            raise CallerRefused("Invalid, revoked or expired API key")
        return owner
    try:
        principal = await gw.verifier.verify_access_when_current(bearer)
    except RevokedToken:
        raise CallerRefused("Access revoked; sign in again") from None
    except RevocationStateBehind:
        raise CallerUncheckable("The token cannot be checked right now") from None
    except InvalidToken:
        raise CallerRefused("Invalid or expired access token") from None
    return KeyOwner(principal.user_id, principal.username, principal.roles, None, False)

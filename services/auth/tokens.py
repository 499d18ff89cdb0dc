"""Issuing access and refresh tokens (verification lives in `shared.security`)."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jwt

from shared.security import TokenType


def new_token_id() -> str:
    return secrets.token_urlsafe(18)


def token_digest(token: str) -> str:
    """What the database keeps of a refresh token: a stolen table grants no session."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedRefreshToken:
    token: str
    token_id: str
    family_id: str
    expires_at: datetime


class TokenIssuer:
    """Signs JWTs the `shared.security.TokenVerifier` of every service accepts."""

    def __init__(
        self,
        secret: str,
        algorithm: str,
        issuer: str,
        audience: str,
        access_ttl: timedelta,
        refresh_ttl: timedelta,
    ) -> None:
        self._secret = secret
        self._algorithm = algorithm
        self._issuer = issuer
        self._audience = audience
        self.access_ttl = access_ttl
        self.refresh_ttl = refresh_ttl

    def _sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self._secret, algorithm=self._algorithm)

    def _base_claims(
        self, user_id: str, token_type: TokenType, now: datetime, ttl: timedelta, jti: str
    ) -> dict[str, Any]:
        issued_at = int(now.timestamp())
        return {
            "sub": user_id,
            "iss": self._issuer,
            "aud": self._audience,
            # Sub-second (a NumericDate may have a fraction): a revocation voids tokens issued
            # before its instant, and a token issued just after it, in the same second, is valid.
            "iat": round(now.timestamp(), 6),
            "nbf": issued_at,
            "exp": issued_at + int(ttl.total_seconds()),
            "jti": jti,
            "typ": token_type.value,
        }

    def access_token(self, user_id: str, username: str, roles: list[str], now: datetime) -> str:
        claims = self._base_claims(user_id, TokenType.ACCESS, now, self.access_ttl, new_token_id())
        claims["username"] = username
        claims["roles"] = list(roles)
        return self._sign(claims)

    def refresh_token(
        self, user_id: str, now: datetime, family_id: str | None = None
    ) -> IssuedRefreshToken:
        """A refresh token; without `family_id` it starts a new family (a new login)."""
        token_id = new_token_id()
        family = family_id or new_token_id()
        claims = self._base_claims(user_id, TokenType.REFRESH, now, self.refresh_ttl, token_id)
        claims["fam"] = family
        return IssuedRefreshToken(
            token=self._sign(claims),
            token_id=token_id,
            family_id=family,
            expires_at=now + self.refresh_ttl,
        )

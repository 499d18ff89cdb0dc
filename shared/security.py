"""Access-token verification shared by every service that accepts tokens (auth issues them)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Protocol

import jwt
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from shared.settings import ServiceSettings

MAX_TOKEN_LENGTH = 4096
REVOCATIONS_WAIT_S = 2.0


class Role(StrEnum):
    ADMIN = "admin"
    MANAGER = "manager"
    USER = "user"


class TokenType(StrEnum):
    ACCESS = "access"
    REFRESH = "refresh"


@dataclass(frozen=True)
class Principal:
    """Who is calling, as the access token says."""

    user_id: str
    username: str
    roles: frozenset[str]
    token_id: str
    issued_at: float = 0.0
    expires_at: float = float("inf")
    """When the token stops being valid (its `exp`): a socket closes then."""

    @property
    def is_admin(self) -> bool:
        return Role.ADMIN in self.roles

    def has_any_role(self, *roles: Role) -> bool:
        return bool(self.roles & {r.value for r in roles})


class InvalidToken(Exception):
    """The token is missing, malformed, forged, expired or of the wrong type."""


class RevokedToken(InvalidToken):
    """The token is well-formed but its user's access was revoked after it was issued."""


class RevocationStateBehind(Exception):
    """This process may have missed revocations (broker reconnect) and is catching up."""


class RevocationCheck(Protocol):
    def check(self, principal: Principal) -> None:
        """Raise `RevokedToken`, or `RevocationStateBehind` while the state is catching up."""

    async def wait_current(self, timeout_s: float) -> bool:
        """Whether the state caught up within `timeout_s`."""


class TokenVerifier:
    """Checks signature, pinned algorithm, `exp`/`nbf`/`iss`/`aud`/`sub` and the token type."""

    def __init__(
        self,
        secret: str,
        algorithm: str,
        issuer: str,
        audience: str,
        revocations: RevocationCheck | None = None,
    ) -> None:
        self._secret = secret
        self._algorithms = [algorithm]
        self._issuer = issuer
        self._audience = audience
        self._revocations = revocations

    @classmethod
    def from_settings(
        cls, settings: ServiceSettings, revocations: RevocationCheck | None = None
    ) -> TokenVerifier:
        return cls(
            settings.jwt_secret,
            settings.jwt_algorithm,
            settings.jwt_issuer,
            settings.jwt_audience,
            revocations,
        )

    def decode(self, token: str, expected_type: TokenType) -> dict[str, Any]:
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken("token missing or too long")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._secret,
                algorithms=self._algorithms,
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp", "iat", "iss", "aud", "sub", "jti", "typ"]},
                leeway=5,
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc)) from exc
        if claims.get("typ") != expected_type.value:
            raise InvalidToken("wrong token type")
        return claims

    async def verify_access_when_current(self, token: str) -> Principal:
        """`verify_access`, waiting briefly while the revocation state catches up (just after a
        broker reconnect, for milliseconds) instead of refusing at once."""
        try:
            return self.verify_access(token)
        except RevocationStateBehind:
            if self._revocations is None or not await self._revocations.wait_current(
                REVOCATIONS_WAIT_S
            ):
                raise
        return self.verify_access(token)

    def verify_access(self, token: str) -> Principal:
        claims = self.decode(token, TokenType.ACCESS)
        roles = claims.get("roles", [])
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise InvalidToken("malformed roles claim")
        principal = Principal(
            user_id=str(claims["sub"]),
            username=str(claims.get("username", "")),
            roles=frozenset(roles),
            token_id=str(claims["jti"]),
            issued_at=float(claims["iat"]),
            expires_at=float(claims["exp"]),
        )
        if self._revocations is not None:
            self._revocations.check(principal)
        return principal


_bearer = HTTPBearer(auto_error=False)


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=detail,
        headers={"WWW-Authenticate": "Bearer"},
    )


def get_token_verifier(request: Request) -> TokenVerifier:
    verifier: TokenVerifier = request.app.state.token_verifier
    return verifier


async def get_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    verifier: Annotated[TokenVerifier, Depends(get_token_verifier)],
) -> Principal:
    if credentials is None:
        raise _unauthorized("Not authenticated")
    try:
        principal = await verifier.verify_access_when_current(credentials.credentials)
    except RevokedToken:
        raise _unauthorized("Access revoked; log in again") from None
    except InvalidToken:
        raise _unauthorized("Invalid or expired token") from None
    except RevocationStateBehind:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail="catching up on revoked sessions; retry shortly",
            headers={"Retry-After": "1"},
        ) from None
    request.state.user_id = principal.user_id
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


def require_roles(*roles: Role) -> Any:
    """Dependency: the caller must hold one of `roles` (403 otherwise, 401 without a token)."""

    async def _check(principal: CurrentPrincipal) -> Principal:
        if not principal.has_any_role(*roles):
            raise HTTPException(status.HTTP_403_FORBIDDEN, detail="Insufficient role")
        return principal

    return Depends(_check)

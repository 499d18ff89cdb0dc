"""Logins, token rotation and logout, with the per-account lockout: the auth rules of sessions.

Refusals that must be remembered — a failed login that counts towards the lockout, a reused
refresh token that revokes its family — are returned instead of raised, so their unit of work
commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from sqlalchemy.ext.asyncio import AsyncSession

from services.auth import repository
from services.auth.events import PRODUCER
from services.auth.models import RefreshToken, User
from services.auth.passwords import PasswordHasher
from services.auth.tokens import TokenIssuer, token_digest
from shared.events import Event, UserLoggedIn, UserLoggedOut, UserLoginFailed
from shared.outbox import Outbox
from shared.security import InvalidToken, TokenType, TokenVerifier


def _now() -> datetime:
    return datetime.now(UTC)


class LoginRefusal(StrEnum):
    UNKNOWN_USER = "unknown_user"
    WRONG_PASSWORD = "wrong_password"
    LOCKED = "locked"
    INACTIVE = "inactive"


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int


@dataclass(frozen=True)
class LoginRefused:
    reason: LoginRefusal
    retry_after_s: float = 0.0


class RefreshRefusal(StrEnum):
    INVALID = "invalid"
    REUSED = "reused"
    REVOKED = "revoked"
    EXPIRED = "expired"
    USER_UNAVAILABLE = "user_unavailable"


@dataclass(frozen=True)
class RefreshRefused:
    reason: RefreshRefusal


@dataclass(frozen=True)
class PasswordChangeRefused:
    """The current password was wrong (`retry_after_s` == 0) or the account is locked."""

    retry_after_s: float = 0.0


@dataclass(frozen=True)
class ClientInfo:
    ip: str | None
    user_agent: str | None


@dataclass(frozen=True)
class LockoutPolicy:
    """Failed logins are counted per account *and* source address: a guesser locks only
    themselves out, never the owner logging in from elsewhere (issue 11, item 10).

    `threshold` failures from one address within `window` lock that address out of the account.
    Once the account has `account_threshold` failures from all addresses together (a guesser
    with many addresses), every address that has failed on it is locked after its first
    failure; addresses without a failure — the owner's — still log in.
    """

    threshold: int
    window: timedelta
    account_threshold: int = 50
    refresh_reuse_grace: timedelta = timedelta(seconds=10)
    """A rotated refresh token presented again this soon is a concurrent refresh (several tabs),
    answered with another pair of the same family; later, it is reuse (RFC 9700 §4.14.2)."""


def failure_subject(account: str, source: str | None) -> str:
    """What a failed login is counted against: the account as seen from one source."""
    return f"{account}@{source or 'unknown'}"


class Logins:
    """Login, refresh and logout, bound to one unit of work (`Accounts.logins`)."""

    def __init__(
        self,
        session: AsyncSession,
        outbox: Outbox,
        passwords: PasswordHasher,
        issuer: TokenIssuer,
        verifier: TokenVerifier,
        lockout: LockoutPolicy,
    ) -> None:
        self._session = session
        self._outbox = outbox
        self._passwords = passwords
        self._issuer = issuer
        self._verifier = verifier
        self._lockout = lockout

    async def _emit(self, event: Event) -> None:
        await self._outbox.stage(self._session, event)

    async def login(
        self, identifier: str, password: str, client: ClientInfo
    ) -> TokenPair | LoginRefused:
        user = await repository.find_user_by_login(self._session, identifier)
        # Unknown names lock like accounts do, so a 429 never tells an attacker a name exists.
        # Hashed: bounded length, and a password typed into the name field is not kept.
        account = f"user:{user.id}" if user else f"name:{token_digest(identifier.casefold())}"
        if user is None:
            await repository.lock_named(self._session, account)
        subject = failure_subject(account, client.ip)
        now = _now()
        locked_for = await self.locked_for(account, subject, now)
        if locked_for:
            await self._refuse(identifier, user, LoginRefusal.LOCKED, client)
            return LoginRefused(LoginRefusal.LOCKED, locked_for)

        matches, upgraded_hash = await self._passwords.verify(
            password, user.password_hash if user else None
        )
        if user is None or not matches:
            await self.record_failure(subject, now)
            reason = LoginRefusal.UNKNOWN_USER if user is None else LoginRefusal.WRONG_PASSWORD
            await self._refuse(identifier, user, reason, client)
            return LoginRefused(reason)
        if not user.is_active:
            await self._refuse(identifier, user, LoginRefusal.INACTIVE, client)
            return LoginRefused(LoginRefusal.INACTIVE)

        await repository.clear_login_failures(self._session, subject)
        await repository.delete_expired_tokens_of_user(self._session, user.id, now)
        if upgraded_hash:
            user.password_hash = upgraded_hash
        user.last_login_at = now
        pair = self._issue_pair(user, now, family_id=None)
        await self._emit(
            UserLoggedIn(
                producer=PRODUCER,
                user_id=user.id,
                username=user.username,
                ip=client.ip,
                user_agent=client.user_agent,
            )
        )
        return pair

    async def locked_for(self, account: str, subject: str, now: datetime) -> float:
        """Seconds `subject` (an account seen from one source) stays locked (0 when it is not)."""
        since = now - self._lockout.window
        failures = await repository.recent_login_failures(self._session, subject, since)
        if len(failures) >= self._lockout.threshold:
            # Locked until the oldest of the last `threshold` failures leaves the window.
            unlock_at = failures[self._lockout.threshold - 1] + self._lockout.window
        elif failures and (
            await repository.count_login_failures_of_account(self._session, account, since)
            >= self._lockout.account_threshold
        ):
            unlock_at = failures[0] + self._lockout.window
        else:
            return 0.0
        return max((unlock_at - now).total_seconds(), 0.001)

    async def record_failure(self, subject: str, now: datetime) -> None:
        await repository.record_login_failure(
            self._session, subject, now, forget_before=now - self._lockout.window
        )

    async def _refuse(
        self, identifier: str, user: User | None, reason: LoginRefusal, client: ClientInfo
    ) -> None:
        await self._emit(
            UserLoginFailed(
                producer=PRODUCER,
                user_id=user.id if user else None,
                # Never the text typed for an unknown name: it is often a password typed into
                # the wrong field, and analytics shows this event to managers.
                username_attempted=user.username if user else None,
                reason=reason.value,
                ip=client.ip,
                user_agent=client.user_agent,
            )
        )

    def _issue_pair(self, user: User, now: datetime, family_id: str | None) -> TokenPair:
        refresh = self._issuer.refresh_token(user.id, now, family_id)
        repository.add_refresh_token(
            self._session,
            RefreshToken(
                id=refresh.token_id,
                family_id=refresh.family_id,
                user_id=user.id,
                token_hash=token_digest(refresh.token),
                created_at=now,
                expires_at=refresh.expires_at,
            ),
        )
        return TokenPair(
            access_token=self._issuer.access_token(user.id, user.username, user.roles, now),
            refresh_token=refresh.token,
            expires_in=int(self._issuer.access_ttl.total_seconds()),
        )

    async def _stored_refresh_token(self, token: str) -> RefreshToken | None:
        try:
            self._verifier.decode(token, TokenType.REFRESH)
        except InvalidToken:
            return None
        return await repository.get_refresh_token(self._session, token_digest(token))

    async def refresh(self, token: str) -> TokenPair | RefreshRefused:
        """Exchange a refresh token for a new pair; a second use revokes the whole family."""
        stored = await self._stored_refresh_token(token)
        if stored is None:
            return RefreshRefused(RefreshRefusal.INVALID)
        now = _now()
        if stored.revoked_at is not None:
            return RefreshRefused(RefreshRefusal.REVOKED)
        if stored.rotated_at is not None and (
            now - stored.rotated_at > self._lockout.refresh_reuse_grace
        ):
            # RFC 9700 refresh token rotation: one of two holders stole it; end both sessions.
            await repository.revoke_token_family(self._session, stored.family_id, now)
            return RefreshRefused(RefreshRefusal.REUSED)
        # Within the grace window a second use is another tab refreshing at the same moment:
        # it gets a pair of the same family, which a later revocation ends together.
        if stored.expires_at <= now:
            return RefreshRefused(RefreshRefusal.EXPIRED)
        user = await repository.get_user(self._session, stored.user_id)
        if user is None or not user.is_active:
            await repository.revoke_token_family(self._session, stored.family_id, now)
            return RefreshRefused(RefreshRefusal.USER_UNAVAILABLE)
        stored.rotated_at = stored.rotated_at or now
        return self._issue_pair(user, now, family_id=stored.family_id)

    async def logout(self, token: str, client: ClientInfo) -> bool:
        """Revoke the session (token family) `token` belongs to; False when it is not ours."""
        stored = await self._stored_refresh_token(token)
        if stored is None:
            return False
        revoked = await repository.revoke_token_family(self._session, stored.family_id, _now())
        if revoked:
            await self._emit(
                UserLoggedOut(
                    producer=PRODUCER,
                    user_id=stored.user_id,
                    ip=client.ip,
                    user_agent=client.user_agent,
                )
            )
        return True

    async def unlock(self, user_id: str) -> None:
        """Forget the account's failed logins from every source (an admin's decision)."""
        await repository.clear_login_failures_of_account(self._session, f"user:{user_id}")

    async def prune(self) -> None:
        """Forget what can no longer matter: failures outside the window, expired tokens."""
        now = _now()
        await repository.delete_login_failures_before(self._session, now - self._lockout.window)
        await repository.delete_expired_tokens(self._session, now)

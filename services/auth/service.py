"""Accounts, logins and token rotation: the auth service's rules, free of HTTP.

Every method runs inside one unit of work (`Accounts` is bound to its session). Errors that must
leave nothing behind are raised (the transaction rolls back, staged events with it). Refusals
that must be remembered — a failed login that counts towards the lockout, a reused refresh token
that revokes its family — are returned instead, so their unit of work commits.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.auth.models import UNIQUE_EMAIL_INDEX, UNIQUE_USERNAME_INDEX, RefreshToken, User
from services.auth.passwords import PasswordHasher, password_policy_violation
from services.auth.repository import (
    LoginFailureRepository,
    RefreshTokenRepository,
    UserRepository,
)
from services.auth.tokens import TokenIssuer, token_digest
from shared.events import (
    Event,
    UserDeactivated,
    UserDeleted,
    UserLoggedIn,
    UserLoggedOut,
    UserLoginFailed,
    UserReactivated,
    UserRegistered,
    UserRoleChanged,
    UserSessionsRevoked,
    UserUpdated,
)
from shared.ids import IdKind, is_valid_id, new_id
from shared.outbox import Outbox
from shared.security import InvalidToken, Role, TokenType, TokenVerifier

PRODUCER = "auth"


def _now() -> datetime:
    return datetime.now(UTC)


def _failure_subject(account: str, source: str | None) -> str:
    """What a failed login is counted against: the account as seen from one source."""
    return f"{account}@{source or 'unknown'}"


# --- errors (the unit of work rolls back) -----------------------------------------------------


class AccountError(Exception):
    """A request the rules refuse; nothing it did is kept."""


class DuplicateAccount(AccountError):
    def __init__(self, field: str) -> None:
        super().__init__(f"{field} already registered")
        self.field = field


class UserNotFound(AccountError):
    def __init__(self) -> None:
        super().__init__("User not found")


class LastAdmin(AccountError):
    def __init__(self) -> None:
        super().__init__("The last active admin cannot be removed, demoted or deactivated")


class PasswordPolicyViolation(AccountError):
    """The password breaks the policy (only reachable where the schema cannot see both sides)."""


# --- outcomes that commit ---------------------------------------------------------------------


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
class UserChanges:
    """Fields to change; None leaves a field alone (`full_name=""` clears it)."""

    full_name: str | None = None
    roles: list[Role] | None = None
    is_active: bool | None = None


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


class Accounts:
    """The auth rules, bound to one unit of work."""

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
        self._users = UserRepository(session)
        self._tokens = RefreshTokenRepository(session)
        self._failures = LoginFailureRepository(session)

    async def _emit(self, event: Event) -> None:
        await self._outbox.stage(self._session, event)

    # --- registration ---------------------------------------------------------------------

    async def register(
        self,
        *,
        username: str,
        email: str,
        password: str,
        full_name: str | None,
        client: ClientInfo | None,
        roles: list[Role] | None = None,
    ) -> User:
        violation = password_policy_violation(password, username=username, email=email)
        if violation:
            raise PasswordPolicyViolation(violation)
        now = _now()
        user = User(
            id=new_id(IdKind.USER),
            username=username,
            email=email,
            password_hash=await self._passwords.hash(password),
            full_name=full_name or None,
            roles=[r.value for r in roles or [Role.USER]],
            is_active=True,
            created_at=now,
            updated_at=now,
        )
        self._users.add(user)
        await self._emit(
            UserRegistered(
                producer=PRODUCER,
                user_id=user.id,
                username=user.username,
                roles=list(user.roles),
                ip=client.ip if client else None,
                user_agent=client.user_agent if client else None,
            )
        )
        # The unique indexes decide (no check-then-insert race); the staged event rolls back too.
        try:
            await self._users.flush()
        except IntegrityError as exc:
            message = str(exc.orig)
            if UNIQUE_USERNAME_INDEX in message:
                raise DuplicateAccount("username") from None
            if UNIQUE_EMAIL_INDEX in message:
                raise DuplicateAccount("email") from None
            raise
        return user

    async def any_active_admin(self) -> bool:
        return await self._users.count_active_admins() > 0

    async def lock_named(self, name: str) -> None:
        """Serialise this unit of work with every other one taking the same named lock."""
        await self._users.lock_named(name)

    # --- login ----------------------------------------------------------------------------

    async def login(
        self, identifier: str, password: str, client: ClientInfo
    ) -> TokenPair | LoginRefused:
        user = await self._users.find_by_login(identifier)
        # Unknown names lock like accounts do, so a 429 never tells an attacker a name exists.
        # Hashed: bounded length, and a password typed into the name field is not kept.
        account = f"user:{user.id}" if user else f"name:{token_digest(identifier.casefold())}"
        if user is None:
            await self._users.lock_named(account)
        subject = _failure_subject(account, client.ip)
        now = _now()
        locked_for = await self._locked_for(account, subject, now)
        if locked_for:
            await self._refuse(identifier, user, LoginRefusal.LOCKED, client)
            return LoginRefused(LoginRefusal.LOCKED, locked_for)

        matches, upgraded_hash = await self._passwords.verify(
            password, user.password_hash if user else None
        )
        if user is None or not matches:
            await self._record_failure(subject, now)
            reason = LoginRefusal.UNKNOWN_USER if user is None else LoginRefusal.WRONG_PASSWORD
            await self._refuse(identifier, user, reason, client)
            return LoginRefused(reason)
        if not user.is_active:
            await self._refuse(identifier, user, LoginRefusal.INACTIVE, client)
            return LoginRefused(LoginRefusal.INACTIVE)

        await self._failures.clear(subject)
        await self._tokens.delete_expired_of_user(user.id, now)
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

    async def _locked_for(self, account: str, subject: str, now: datetime) -> float:
        """Seconds `subject` (an account seen from one source) stays locked (0 when it is not)."""
        since = now - self._lockout.window
        failures = await self._failures.recent(subject, since)
        if len(failures) >= self._lockout.threshold:
            # Locked until the oldest of the last `threshold` failures leaves the window.
            unlock_at = failures[self._lockout.threshold - 1] + self._lockout.window
        elif failures and (
            await self._failures.count_for_account(account, since)
            >= self._lockout.account_threshold
        ):
            unlock_at = failures[0] + self._lockout.window
        else:
            return 0.0
        return max((unlock_at - now).total_seconds(), 0.001)

    async def _record_failure(self, subject: str, now: datetime) -> None:
        await self._failures.record(subject, now, forget_before=now - self._lockout.window)

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
        self._tokens.add(
            RefreshToken(
                id=refresh.token_id,
                family_id=refresh.family_id,
                user_id=user.id,
                token_hash=token_digest(refresh.token),
                created_at=now,
                expires_at=refresh.expires_at,
            )
        )
        return TokenPair(
            access_token=self._issuer.access_token(user.id, user.username, user.roles, now),
            refresh_token=refresh.token,
            expires_in=int(self._issuer.access_ttl.total_seconds()),
        )

    # --- refresh and logout ---------------------------------------------------------------

    async def _stored_refresh_token(self, token: str) -> RefreshToken | None:
        try:
            self._verifier.decode(token, TokenType.REFRESH)
        except InvalidToken:
            return None
        return await self._tokens.get_by_digest(token_digest(token))

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
            await self._tokens.revoke_family(stored.family_id, now)
            return RefreshRefused(RefreshRefusal.REUSED)
        # Within the grace window a second use is another tab refreshing at the same moment:
        # it gets a pair of the same family, which a later revocation ends together.
        if stored.expires_at <= now:
            return RefreshRefused(RefreshRefusal.EXPIRED)
        user = await self._users.get(stored.user_id)
        if user is None or not user.is_active:
            await self._tokens.revoke_family(stored.family_id, now)
            return RefreshRefused(RefreshRefusal.USER_UNAVAILABLE)
        stored.rotated_at = stored.rotated_at or now
        return self._issue_pair(user, now, family_id=stored.family_id)

    async def logout(self, token: str, client: ClientInfo) -> bool:
        """Revoke the session (token family) `token` belongs to; False when it is not ours."""
        stored = await self._stored_refresh_token(token)
        if stored is None:
            return False
        revoked = await self._tokens.revoke_family(stored.family_id, _now())
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

    # --- reading and changing accounts ----------------------------------------------------

    async def get_user(self, user_id: str, *, for_update: bool = False) -> User:
        user = None
        if is_valid_id(user_id, IdKind.USER):
            user = await self._users.get(user_id, for_update=for_update)
        if user is None:
            raise UserNotFound()
        return user

    async def active_user(self, user_id: str, *, for_update: bool = False) -> User | None:
        """The account behind an access token, when it still exists and may act."""
        if not is_valid_id(user_id, IdKind.USER):
            return None
        user = await self._users.get(user_id, for_update=for_update)
        return user if user is not None and user.is_active else None

    async def search_users(
        self, *, q: str | None, role: Role | None, is_active: bool | None, skip: int, limit: int
    ) -> tuple[list[User], int]:
        users, total = await self._users.search(
            q=q, role=role, is_active=is_active, skip=skip, limit=limit
        )
        return list(users), total

    async def update_user(self, user_id: str, changes: UserChanges, actor_id: str) -> User:
        await self._users.lock_active_admins()
        user = await self.get_user(user_id, for_update=True)
        changed: list[str] = []
        if changes.full_name is not None and (changes.full_name or None) != user.full_name:
            user.full_name = changes.full_name or None
            changed.append("full_name")
        if changes.roles is not None:
            roles = sorted({r.value for r in changes.roles})
            if roles != sorted(user.roles):
                user.roles = roles
                changed.append("roles")
        if changes.is_active is not None and changes.is_active != user.is_active:
            user.is_active = changes.is_active
            changed.append("is_active")
        if not changed:
            return user
        now = _now()
        user.updated_at = now
        if "is_active" in changed and not user.is_active:
            await self._tokens.revoke_all_of_user(user.id, now)
        await self._emit(
            UserUpdated(
                producer=PRODUCER,
                user_id=user.id,
                changed_fields=changed,
                roles=list(user.roles),
                is_active=user.is_active,
                actor_id=actor_id,
            )
        )
        # What the gateways and analytics act on: access tokens issued before are void there.
        if "roles" in changed:
            await self._emit(
                UserRoleChanged(
                    producer=PRODUCER, user_id=user.id, roles=list(user.roles), actor_id=actor_id
                )
            )
        if "is_active" in changed:
            kind = UserReactivated if user.is_active else UserDeactivated
            await self._emit(kind(producer=PRODUCER, user_id=user.id, actor_id=actor_id))
        await self._users.flush()
        # Checked after the change, under the lock taken above; raising rolls back the event.
        if await self._users.count_active_admins() == 0:
            raise LastAdmin()
        return user

    async def delete_user(self, user_id: str, actor_id: str) -> None:
        await self._users.lock_active_admins()
        user = await self.get_user(user_id, for_update=True)
        await self._emit(UserDeleted(producer=PRODUCER, user_id=user.id, actor_id=actor_id))
        await self._users.delete(user)
        if await self._users.count_active_admins() == 0:
            raise LastAdmin()

    async def update_me(
        self,
        user_id: str,
        *,
        full_name: str | None,
        new_password: str | None,
        current_password: str | None,
    ) -> User | PasswordChangeRefused:
        """Change the caller's own account; a wrong current password counts towards the lockout.

        Otherwise a stolen access token would allow guessing the password at full speed.
        """
        user = await self.active_user(user_id, for_update=True)
        if user is None:
            raise UserNotFound()
        changed: list[str] = []
        now = _now()
        if new_password is not None:
            account = f"user:{user.id}"
            subject = _failure_subject(account, "password-change")
            locked_for = await self._locked_for(account, subject, now)
            if locked_for:
                return PasswordChangeRefused(locked_for)
            matches, _ = await self._passwords.verify(current_password or "", user.password_hash)
            if not matches:
                await self._record_failure(subject, now)
                return PasswordChangeRefused()
            violation = password_policy_violation(
                new_password, username=user.username, email=user.email
            )
            if violation:
                raise PasswordPolicyViolation(violation)
            user.password_hash = await self._passwords.hash(new_password)
            # Every session started with the old password ends: a thief's refresh token dies,
            # and (through the event) every access token issued before, on every service.
            await self._tokens.revoke_all_of_user(user.id, now)
            await self._emit(
                UserSessionsRevoked(producer=PRODUCER, user_id=user.id, reason="password_changed")
            )
            changed.append("password")
        if full_name is not None and (full_name or None) != user.full_name:
            user.full_name = full_name or None
            changed.append("full_name")
        if changed:
            user.updated_at = now
            await self._emit(
                UserUpdated(
                    producer=PRODUCER,
                    user_id=user.id,
                    changed_fields=changed,
                    roles=list(user.roles),
                    is_active=user.is_active,
                    actor_id=user.id,
                )
            )
        return user

    async def log_out_everywhere(self, user_id: str) -> None:
        """End every session of the account: refresh tokens now, access tokens via the event."""
        user = await self.active_user(user_id, for_update=True)
        if user is None:
            raise UserNotFound()
        await self._tokens.revoke_all_of_user(user.id, _now())
        await self._emit(
            UserSessionsRevoked(producer=PRODUCER, user_id=user.id, reason="logout_everywhere")
        )

    async def unlock(self, user_id: str) -> None:
        """Forget the account's failed logins from every source (an admin's decision)."""
        user = await self.get_user(user_id)
        await self._failures.clear_account(f"user:{user.id}")

    async def prune(self) -> None:
        """Forget what can no longer matter: failures outside the window, expired tokens."""
        now = _now()
        await self._failures.delete_before(now - self._lockout.window)
        await self._tokens.delete_expired(now)


@dataclass(frozen=True)
class AccountsFactory:
    """What `Accounts` needs besides a session; built once by the composition root."""

    outbox: Outbox
    passwords: PasswordHasher
    issuer: TokenIssuer
    verifier: TokenVerifier
    lockout: LockoutPolicy

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[Accounts]:
        """Commit on success (then publish the staged events), roll back on any error."""
        async with self.outbox.unit_of_work() as session:
            yield Accounts(
                session, self.outbox, self.passwords, self.issuer, self.verifier, self.lockout
            )

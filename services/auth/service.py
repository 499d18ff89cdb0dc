"""Accounts: registration, reading and changing users — the auth service's rules, free of HTTP.

Every method runs inside one unit of work (`Accounts` is bound to its session). Errors that must
leave nothing behind are raised (`services.auth.errors`: the transaction rolls back, staged
events with it). Logins, token rotation and the lockout live in `services.auth.login`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from services.auth import repository
from services.auth.errors import DuplicateAccount, LastAdmin, PasswordPolicyViolation, UserNotFound
from services.auth.events import PRODUCER, user_updated
from services.auth.login import (
    ClientInfo,
    LockoutPolicy,
    Logins,
    PasswordChangeRefused,
    failure_subject,
)
from services.auth.models import UNIQUE_EMAIL_INDEX, UNIQUE_USERNAME_INDEX, User
from services.auth.passwords import PasswordHasher, password_policy_violation
from services.auth.tokens import TokenIssuer
from shared.events import (
    Event,
    UserDeactivated,
    UserDeleted,
    UserReactivated,
    UserRegistered,
    UserRoleChanged,
    UserSessionsRevoked,
)
from shared.ids import IdKind, is_valid_id, new_id
from shared.outbox import Outbox
from shared.security import Role, TokenVerifier


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class UserChanges:
    """Fields to change; None leaves a field alone (`full_name=""` clears it)."""

    full_name: str | None = None
    roles: list[Role] | None = None
    is_active: bool | None = None


class Accounts:
    """The auth rules, bound to one unit of work."""

    def __init__(self, session: AsyncSession, rules: AccountsFactory) -> None:
        self._session = session
        self._outbox = rules.outbox
        self._passwords = rules.passwords
        self.logins = Logins(
            session, rules.outbox, rules.passwords, rules.issuer, rules.verifier, rules.lockout
        )

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
        repository.add_user(self._session, user)
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
            await self._session.flush()
        except IntegrityError as exc:
            message = str(exc.orig)
            if UNIQUE_USERNAME_INDEX in message:
                raise DuplicateAccount("username") from None
            if UNIQUE_EMAIL_INDEX in message:
                raise DuplicateAccount("email") from None
            raise
        return user

    async def any_active_admin(self) -> bool:
        return await repository.count_active_admins(self._session) > 0

    async def lock_named(self, name: str) -> None:
        """Serialise this unit of work with every other one taking the same named lock."""
        await repository.lock_named(self._session, name)

    # --- reading and changing accounts ----------------------------------------------------

    async def get_user(self, user_id: str, *, for_update: bool = False) -> User:
        user = None
        if is_valid_id(user_id, IdKind.USER):
            user = await repository.get_user(self._session, user_id, for_update=for_update)
        if user is None:
            raise UserNotFound()
        return user

    async def active_user(self, user_id: str, *, for_update: bool = False) -> User | None:
        """The account behind an access token, when it still exists and may act."""
        if not is_valid_id(user_id, IdKind.USER):
            return None
        user = await repository.get_user(self._session, user_id, for_update=for_update)
        return user if user is not None and user.is_active else None

    async def search_users(
        self, *, q: str | None, role: Role | None, is_active: bool | None, skip: int, limit: int
    ) -> tuple[list[User], int]:
        users, total = await repository.search_users(
            self._session, q=q, role=role, is_active=is_active, skip=skip, limit=limit
        )
        return list(users), total

    async def update_user(self, user_id: str, changes: UserChanges, actor_id: str) -> User:
        await repository.lock_active_admins(self._session)
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
            await repository.revoke_tokens_of_user(self._session, user.id, now)
        await self._emit(user_updated(user, changed, actor_id))
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
        await self._session.flush()
        # Checked after the change, under the lock taken above; raising rolls back the event.
        if await repository.count_active_admins(self._session) == 0:
            raise LastAdmin()
        return user

    async def delete_user(self, user_id: str, actor_id: str) -> None:
        await repository.lock_active_admins(self._session)
        user = await self.get_user(user_id, for_update=True)
        await self._emit(UserDeleted(producer=PRODUCER, user_id=user.id, actor_id=actor_id))
        await repository.delete_user(self._session, user)
        if await repository.count_active_admins(self._session) == 0:
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
            subject = failure_subject(account, "password-change")
            locked_for = await self.logins.locked_for(account, subject, now)
            if locked_for:
                return PasswordChangeRefused(locked_for)
            matches, _ = await self._passwords.verify(current_password or "", user.password_hash)
            if not matches:
                await self.logins.record_failure(subject, now)
                return PasswordChangeRefused()
            violation = password_policy_violation(
                new_password, username=user.username, email=user.email
            )
            if violation:
                raise PasswordPolicyViolation(violation)
            user.password_hash = await self._passwords.hash(new_password)
            # Every session started with the old password ends: a thief's refresh token dies,
            # and (through the event) every access token issued before, on every service.
            await repository.revoke_tokens_of_user(self._session, user.id, now)
            await self._emit(
                UserSessionsRevoked(producer=PRODUCER, user_id=user.id, reason="password_changed")
            )
            changed.append("password")
        if full_name is not None and (full_name or None) != user.full_name:
            user.full_name = full_name or None
            changed.append("full_name")
        if changed:
            user.updated_at = now
            await self._emit(user_updated(user, changed, actor_id=user.id))
        return user

    async def log_out_everywhere(self, user_id: str) -> None:
        """End every session of the account: refresh tokens now, access tokens via the event."""
        user = await self.active_user(user_id, for_update=True)
        if user is None:
            raise UserNotFound()
        await repository.revoke_tokens_of_user(self._session, user.id, _now())
        await self._emit(
            UserSessionsRevoked(producer=PRODUCER, user_id=user.id, reason="logout_everywhere")
        )

    async def unlock(self, user_id: str) -> None:
        """Forget the account's failed logins from every source (an admin's decision)."""
        user = await self.get_user(user_id)
        await self.logins.unlock(user.id)


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
            yield Accounts(session, self)

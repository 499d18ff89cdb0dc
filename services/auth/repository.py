"""Queries of the `auth` schema. Never commits: the edge owns the transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, func, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.auth.models import LoginFailure, RefreshToken, User
from shared.like_pattern import LIKE_ESCAPE, contains_pattern
from shared.security import Role


class UserRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    def add(self, user: User) -> None:
        self._session.add(user)

    async def flush(self) -> None:
        await self._session.flush()

    async def get(self, user_id: str, *, for_update: bool = False) -> User | None:
        query = select(User).where(User.id == user_id)
        if for_update:
            query = query.with_for_update()
        return (await self._session.execute(query)).scalar_one_or_none()

    async def find_by_login(self, identifier: str) -> User | None:
        """By email when it contains `@` (usernames cannot), else by username; any case."""
        column = User.email if "@" in identifier else User.username
        query = select(User).where(func.lower(column) == identifier.lower()).with_for_update()
        return (await self._session.execute(query)).scalar_one_or_none()

    async def search(
        self,
        *,
        q: str | None,
        role: Role | None,
        is_active: bool | None,
        skip: int,
        limit: int,
    ) -> tuple[Sequence[User], int]:
        conditions = []
        if q:
            pattern = contains_pattern(q)
            conditions.append(
                or_(
                    User.username.ilike(pattern, escape=LIKE_ESCAPE),
                    User.email.ilike(pattern, escape=LIKE_ESCAPE),
                    User.full_name.ilike(pattern, escape=LIKE_ESCAPE),
                )
            )
        if role is not None:
            conditions.append(User.roles.any_() == role.value)
        if is_active is not None:
            conditions.append(User.is_active.is_(is_active))
        total = (
            await self._session.execute(select(func.count()).select_from(User).where(*conditions))
        ).scalar_one()
        rows = (
            await self._session.execute(
                select(User)
                .where(*conditions)
                .order_by(User.created_at, User.id)
                .offset(skip)
                .limit(limit)
            )
        ).scalars()
        return list(rows), total

    async def lock_active_admins(self) -> list[str]:
        """Lock every active admin row, so concurrent demotions cannot both pass the check."""
        query = (
            select(User.id)
            .where(User.roles.any_() == Role.ADMIN.value, User.is_active.is_(True))
            .order_by(User.id)
            .with_for_update()
        )
        return list((await self._session.execute(query)).scalars())

    async def count_active_admins(self) -> int:
        query = select(func.count()).where(
            User.roles.any_() == Role.ADMIN.value, User.is_active.is_(True)
        )
        return (await self._session.execute(query)).scalar_one()

    async def delete(self, user: User) -> None:
        await self._session.delete(user)
        await self._session.flush()

    async def lock_named(self, name: str) -> None:
        """A transaction-scoped advisory lock: serialises work on one account or one name."""
        await self._session.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:name, 0))"), {"name": name}
        )


class RefreshTokenRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    def add(self, token: RefreshToken) -> None:
        self._session.add(token)

    async def get_by_digest(self, digest: str) -> RefreshToken | None:
        # FOR UPDATE: two refreshes racing with one token are serialised; the second is reuse.
        query = select(RefreshToken).where(RefreshToken.token_hash == digest).with_for_update()
        return (await self._session.execute(query)).scalar_one_or_none()

    async def revoke_family(self, family_id: str, now: datetime) -> int:
        result = await self._session.execute(
            update(RefreshToken)
            .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]

    async def revoke_all_of_user(self, user_id: str, now: datetime) -> int:
        result = await self._session.execute(
            update(RefreshToken)
            .where(RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]

    async def delete_expired_of_user(self, user_id: str, now: datetime) -> None:
        # An expired token fails its signature check before its row is read; the row is dead.
        await self._session.execute(
            delete(RefreshToken).where(
                RefreshToken.user_id == user_id, RefreshToken.expires_at <= now
            )
        )

    async def delete_expired(self, now: datetime) -> None:
        await self._session.execute(delete(RefreshToken).where(RefreshToken.expires_at <= now))


class LoginFailureRepository:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def recent(self, subject: str, since: datetime) -> list[datetime]:
        """Failure times of `subject` after `since`, newest first."""
        query = (
            select(LoginFailure.failed_at)
            .where(LoginFailure.subject == subject, LoginFailure.failed_at > since)
            .order_by(LoginFailure.failed_at.desc())
        )
        return list((await self._session.execute(query)).scalars())

    async def record(self, subject: str, at: datetime, forget_before: datetime) -> None:
        # Rows older than the window can never lock again; pruning here keeps the table small.
        await self._session.execute(
            delete(LoginFailure).where(
                LoginFailure.subject == subject, LoginFailure.failed_at <= forget_before
            )
        )
        self._session.add(LoginFailure(subject=subject, failed_at=at))
        await self._session.flush()

    async def delete_before(self, cutoff: datetime) -> None:
        await self._session.execute(delete(LoginFailure).where(LoginFailure.failed_at <= cutoff))

    async def clear(self, subject: str) -> None:
        await self._session.execute(delete(LoginFailure).where(LoginFailure.subject == subject))

    async def count_for_account(self, account: str, since: datetime) -> int:
        """Failures on `account` from every source after `since`."""
        query = select(func.count()).where(
            LoginFailure.subject.startswith(f"{account}@", autoescape=True),
            LoginFailure.failed_at > since,
        )
        return int((await self._session.execute(query)).scalar_one())

    async def clear_account(self, account: str) -> None:
        await self._session.execute(
            delete(LoginFailure).where(
                LoginFailure.subject.startswith(f"{account}@", autoescape=True)
            )
        )

"""Queries of the `auth` schema, as functions of the unit of work's session. Never commits: the
edge owns the transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, func, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.auth.models import LoginFailure, RefreshToken, User
from shared.like_pattern import LIKE_ESCAPE, contains_pattern
from shared.security import Role


def add_user(session: AsyncSession, user: User) -> None:
    session.add(user)


async def flush(session: AsyncSession) -> None:
    await session.flush()


async def get_user(session: AsyncSession, user_id: str, *, for_update: bool = False) -> User | None:
    query = select(User).where(User.id == user_id)
    if for_update:
        query = query.with_for_update()
    return (await session.execute(query)).scalar_one_or_none()


async def find_user_by_login(session: AsyncSession, identifier: str) -> User | None:
    """By email when it contains `@` (usernames cannot), else by username; any case."""
    column = User.email if "@" in identifier else User.username
    query = select(User).where(func.lower(column) == identifier.lower()).with_for_update()
    return (await session.execute(query)).scalar_one_or_none()


async def search_users(
    session: AsyncSession,
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
        await session.execute(select(func.count()).select_from(User).where(*conditions))
    ).scalar_one()
    rows = (
        await session.execute(
            select(User)
            .where(*conditions)
            .order_by(User.created_at, User.id)
            .offset(skip)
            .limit(limit)
        )
    ).scalars()
    return list(rows), total


async def lock_active_admins(session: AsyncSession) -> list[str]:
    """Lock every active admin row, so concurrent demotions cannot both pass the check."""
    query = (
        select(User.id)
        .where(User.roles.any_() == Role.ADMIN.value, User.is_active.is_(True))
        .order_by(User.id)
        .with_for_update()
    )
    return list((await session.execute(query)).scalars())


async def count_active_admins(session: AsyncSession) -> int:
    query = select(func.count()).where(
        User.roles.any_() == Role.ADMIN.value, User.is_active.is_(True)
    )
    return (await session.execute(query)).scalar_one()


async def delete_user(session: AsyncSession, user: User) -> None:
    await session.delete(user)
    await session.flush()


async def lock_named(session: AsyncSession, name: str) -> None:
    """A transaction-scoped advisory lock: serialises work on one account or one name."""
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended(:name, 0))"), {"name": name}
    )


def add_refresh_token(session: AsyncSession, token: RefreshToken) -> None:
    session.add(token)


async def get_refresh_token(session: AsyncSession, digest: str) -> RefreshToken | None:
    # FOR UPDATE: two refreshes racing with one token are serialised; the second is reuse.
    query = select(RefreshToken).where(RefreshToken.token_hash == digest).with_for_update()
    return (await session.execute(query)).scalar_one_or_none()


async def revoke_token_family(session: AsyncSession, family_id: str, now: datetime) -> int:
    result = await session.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def revoke_tokens_of_user(session: AsyncSession, user_id: str, now: datetime) -> int:
    result = await session.execute(
        update(RefreshToken)
        .where(RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def delete_expired_tokens_of_user(session: AsyncSession, user_id: str, now: datetime) -> None:
    # An expired token fails its signature check before its row is read; the row is dead.
    await session.execute(
        delete(RefreshToken).where(RefreshToken.user_id == user_id, RefreshToken.expires_at <= now)
    )


async def delete_expired_tokens(session: AsyncSession, now: datetime) -> None:
    await session.execute(delete(RefreshToken).where(RefreshToken.expires_at <= now))


async def recent_login_failures(
    session: AsyncSession, subject: str, since: datetime
) -> list[datetime]:
    """Failure times of `subject` after `since`, newest first."""
    query = (
        select(LoginFailure.failed_at)
        .where(LoginFailure.subject == subject, LoginFailure.failed_at > since)
        .order_by(LoginFailure.failed_at.desc())
    )
    return list((await session.execute(query)).scalars())


async def record_login_failure(
    session: AsyncSession, subject: str, at: datetime, forget_before: datetime
) -> None:
    # Rows older than the window can never lock again; pruning here keeps the table small.
    await session.execute(
        delete(LoginFailure).where(
            LoginFailure.subject == subject, LoginFailure.failed_at <= forget_before
        )
    )
    session.add(LoginFailure(subject=subject, failed_at=at))
    await session.flush()


async def delete_login_failures_before(session: AsyncSession, cutoff: datetime) -> None:
    await session.execute(delete(LoginFailure).where(LoginFailure.failed_at <= cutoff))


async def clear_login_failures(session: AsyncSession, subject: str) -> None:
    await session.execute(delete(LoginFailure).where(LoginFailure.subject == subject))


async def count_login_failures_of_account(
    session: AsyncSession, account: str, since: datetime
) -> int:
    """Failures on `account` from every source after `since`."""
    query = select(func.count()).where(
        LoginFailure.subject.startswith(f"{account}@", autoescape=True),
        LoginFailure.failed_at > since,
    )
    return int((await session.execute(query)).scalar_one())


async def clear_login_failures_of_account(session: AsyncSession, account: str) -> None:
    await session.execute(
        delete(LoginFailure).where(LoginFailure.subject.startswith(f"{account}@", autoescape=True))
    )

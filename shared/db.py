"""Async SQLAlchemy engine and session helpers. The edge (request, message) owns the transaction."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy import MetaData, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def schema_metadata(schema: str) -> MetaData:
    """Metadata whose tables live in `schema` (one schema per owning service), with the
    project's constraint naming convention so migrations name things predictably."""
    return MetaData(schema=schema, naming_convention=NAMING_CONVENTION)


def asyncpg_dsn(database_url: str, database: str | None = None) -> str:
    """`database_url` as a plain DSN for asyncpg itself, optionally naming another database
    (`"postgres"` to reach the server when the target database may not exist yet)."""
    url = make_url(database_url).set(drivername="postgresql")
    if database is not None:
        url = url.set(database=database)
    return url.render_as_string(hide_password=False)


def create_engine(database_url: str, *, pool_size: int = 10) -> AsyncEngine:
    # No overflow: under a burst, connections opened and closed beyond the pool cost far more
    # CPU than waiting for a pooled one (asyncpg's connect and type set-up take milliseconds).
    return create_async_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=0,
        pool_pre_ping=True,
        pool_recycle=1800,
    )


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    # Objects stay readable after commit: async code must never lazy-load.
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


@asynccontextmanager
async def transaction(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    """One unit of work: commit when the block succeeds, roll back when it raises."""
    async with factory() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


async def ping_database(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


async def skip_commit_flush(session: AsyncSession) -> None:
    """Let this transaction's commit return before its WAL reaches the disk.

    Only for writes that something else keeps safe until they are durable — e.g. a chat
    worker's claim on a request it has not acked yet: a database crash loses at most the
    last few such commits, and the broker redelivers the request. Never for a write that is
    the only record of something a client was told was accepted.
    """
    await session.execute(text("SET LOCAL synchronous_commit TO OFF"))

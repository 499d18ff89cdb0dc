"""Async SQLAlchemy engine and session helpers. The edge (request, message) owns the transaction."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import orjson
from sqlalchemy import MetaData, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
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
    # No pre-ping: it costs three round trips (BEGIN, SELECT 1, ROLLBACK) on every checkout,
    # measured at ~8 % of a chat worker's CPU. A connection that died with the server fails its
    # first statement instead; SQLAlchemy then invalidates the whole pool, and the hot paths
    # retry (`DatabaseConnectionLost`, the chat worker's database retry).
    return create_async_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=0,
        pool_recycle=1800,
        # A failed statement's error (logged with its traceback) must not carry its parameters:
        # they are emails, search terms, message text — or a password typed into a name field.
        hide_parameters=True,
        # JSON read from the database (a claim's history as one `json_agg`) with orjson: the
        # standard decoder was the chat worker's largest cost after the model call (profiled).
        json_deserializer=orjson.loads,
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
            # A unit whose only statement ran on its own autocommit connection (a hot path's
            # `statement_connection`) never began a transaction: nothing to commit, and
            # committing it anyway cost ~8 % of a gateway's CPU per chat turn (yappi).
            if session.in_transaction():
                await session.commit()
        except BaseException:
            await session.rollback()
            raise


_UNAVAILABLE_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57", "58"})
"""Connection exception, transaction rollback (serialisation, deadlock), insufficient
resources, operator intervention (shutdown), system error: retrying later can succeed."""
_UNAVAILABLE_SQLSTATES = frozenset({"55P03"})  # lock not available


def is_database_unavailable(exc: BaseException) -> bool:
    """Whether `exc` means "the database is unreachable or busy, try again", not "this
    statement or its data is wrong" (a bug or bad input, which a retry would only repeat)."""
    if isinstance(exc, (OSError, TimeoutError, PoolTimeoutError)):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated or isinstance(exc.orig, OSError):
            return True
        sqlstate = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    else:
        sqlstate = getattr(exc, "sqlstate", None)  # asyncpg's own errors (driver connection)
    if isinstance(sqlstate, str) and (
        sqlstate[:2] in _UNAVAILABLE_SQLSTATE_CLASSES or sqlstate in _UNAVAILABLE_SQLSTATES
    ):
        return True
    # A client-side encoding error (value out of range) is the data's fault, even though the
    # driver files it under InterfaceError: only a closed connection counts as an outage.
    cause = exc.__cause__
    return cause is not None and cause is not exc and is_database_unavailable(cause)


class DatabaseConnectionLost(ConnectionError):
    """A statement failed because its connection to PostgreSQL is gone; safe to retry."""


_CONNECTION_FAILURES = (
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,
    OSError,
    TimeoutError,
)


@asynccontextmanager
async def driver_connection(engine: AsyncEngine) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection as asyncpg itself, for the few statements on a hot path.

    SQLAlchemy costs ~0.5 ms of CPU per statement on top of asyncpg's ~0.1 ms (measured:
    a one-row SELECT through a session vs. the same on the driver connection), and a session
    adds BEGIN and COMMIT round trips. Hot-path writes are therefore single statements
    (CTEs that change several tables atomically) run here in autocommit mode.

    A lost connection raises `DatabaseConnectionLost` after the pool has been emptied: a
    server restart leaves every pooled connection dead, and without pre-ping each would
    otherwise fail once.
    """
    pool = engine.pool
    async with engine.connect() as connection:
        raw = await connection.get_raw_connection()
        driver: asyncpg.Connection = raw.driver_connection
        try:
            yield driver
        except Exception as exc:
            # asyncpg reports a connection the server closed while it sat in the pool as a
            # plain InterfaceError ("connection is closed"), hence the `is_closed()` check.
            if not isinstance(exc, _CONNECTION_FAILURES) and not driver.is_closed():
                raise
            await connection.invalidate(exc)
            if engine.pool is pool:
                # Once per pool: tasks failing together must not each replace it.
                await engine.dispose()
            raise DatabaseConnectionLost(f"database connection lost: {exc!r}") from exc


async def ping_database(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


async def skip_commit_flush(session: AsyncSession) -> None:
    """Let this transaction's commit return before its WAL reaches the disk.

    Only for writes that something else keeps safe or that may be lost — e.g. a chat worker's
    partial replies, which the final write supersedes: a database crash loses at most the
    last few such commits. Never for a write that is the only record of something a client
    was told was accepted.
    """
    await session.execute(text("SET LOCAL synchronous_commit TO OFF"))


@asynccontextmanager
async def statement_connection(
    session: AsyncSession, engine: AsyncEngine
) -> AsyncIterator[asyncpg.Connection]:
    """The driver connection a hot-path statement runs on.

    If the caller's unit of work has already begun, its own connection, inside its transaction
    (one transaction and one pooled connection per unit); otherwise a pooled connection in
    autocommit (`driver_connection`): the single-statement exception to "the edge owns the
    unit of work".
    """
    if session.in_transaction():
        connection = await session.connection()
        raw = await connection.get_raw_connection()
        driver: asyncpg.Connection = raw.driver_connection
        yield driver
    else:
        async with driver_connection(engine) as driver:
            yield driver

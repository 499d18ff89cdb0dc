"""Async SQLAlchemy engine and session helpers. The edge (request, message) owns the transaction."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import orjson
from sqlalchemy import MetaData, event, text
from sqlalchemy.engine import Engine, make_url
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


HOT_POOL_ACQUIRE_TIMEOUT_S = 30.0
"""As long as SQLAlchemy's pool waits for a free connection (its `pool_timeout`)."""

_hot_pools: weakref.WeakKeyDictionary[Engine, asyncpg.Pool] = weakref.WeakKeyDictionary()
_hot_pools_opening = asyncio.Lock()


async def _keep_session_state(connection: asyncpg.Connection) -> None:
    """A hot-path connection goes back to its pool as it is: its statements run in
    autocommit and change no session state, so asyncpg's reset (a round trip of `RESET ALL`,
    `UNLISTEN *`, ... on every release) would only cost."""


async def _hot_pool(engine: AsyncEngine) -> asyncpg.Pool:
    """asyncpg's own pool beside `engine`'s, as large, opened on first use, closed when the
    engine is disposed."""
    pool = _hot_pools.get(engine.sync_engine)
    if pool is not None:
        return pool
    async with _hot_pools_opening:
        pool = _hot_pools.get(engine.sync_engine)
        if pool is None:
            pool = await asyncpg.create_pool(
                asyncpg_dsn(engine.url.render_as_string(hide_password=False)),
                min_size=0,
                # The engine pool's size (a `QueuePool`); 10 for a pool without one.
                max_size=getattr(engine.pool, "size", lambda: 10)(),
                reset=_keep_session_state,
            )
            _hot_pools[engine.sync_engine] = pool
            event.listen(engine.sync_engine, "engine_disposed", _close_hot_pool)
    return pool


def _close_hot_pool(engine: Engine) -> None:
    pool = _hot_pools.pop(engine, None)
    if pool is not None:
        pool.terminate()


@asynccontextmanager
async def driver_connection(engine: AsyncEngine) -> AsyncIterator[asyncpg.Connection]:
    """A pooled asyncpg connection, for the few statements on a hot path.

    SQLAlchemy costs ~0.5 ms of CPU per statement on top of asyncpg's ~0.1 ms (measured:
    a one-row SELECT through a session vs. the same on the driver connection), and a session
    adds BEGIN and COMMIT round trips. Hot-path writes are therefore single statements
    (CTEs that change several tables atomically) run here in autocommit mode. The connection
    comes from asyncpg's own pool beside the engine's: checking one out of SQLAlchemy's pool
    cost ~80-150 µs of CPU more than the statement itself, against ~30 µs (measured), and a
    chat turn takes three. Its connections have no SQLAlchemy type codecs: `json` comes back
    as text.

    A lost connection raises `DatabaseConnectionLost` after every idle connection of the pool
    has been expired: a server restart leaves each of them dead, and without pre-ping each
    would otherwise fail once.
    """
    pool = await _hot_pool(engine)
    # Bounded by `asyncio.timeout`, not acquire's own `timeout`, which runs it in a task.
    async with asyncio.timeout(HOT_POOL_ACQUIRE_TIMEOUT_S):
        driver: asyncpg.Connection = await pool.acquire()
    try:
        yield driver
    except Exception as exc:
        # asyncpg reports a connection the server closed while it sat in the pool as a
        # plain InterfaceError ("connection is closed"), hence the `is_closed()` check.
        if not isinstance(exc, _CONNECTION_FAILURES) and not driver.is_closed():
            raise
        driver.terminate()
        await pool.expire_connections()
        raise DatabaseConnectionLost(f"database connection lost: {exc!r}") from exc
    finally:
        await pool.release(driver)


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

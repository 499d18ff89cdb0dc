"""Running a worker's database work again while PostgreSQL is unavailable, with a bounded number
of connections in use at once."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError

from shared.db import is_database_unavailable

log = logging.getLogger(__name__)

DB_RETRY_INTERVAL_S = 1.0

T = TypeVar("T")


class DatabaseRetry:
    """`run(operation)` retries a whole transaction while the database is unavailable; past
    `retry_s` the last failure is raised as a `DBAPIError`."""

    def __init__(self, retry_s: float, slots: int) -> None:
        self._retry_s = retry_s
        # Hundreds of replies share `db_pool_size` connections: beyond the pool, SQLAlchemy
        # opens and closes overflow connections, and each new one costs more than a query
        # (measured: the worker's CPU per reply fell from ~43 to ~27 ms without that churn).
        self.slots = asyncio.Semaphore(slots)

    async def run(self, operation: Callable[[], Awaitable[T]]) -> T:
        deadline = time.monotonic() + self._retry_s
        while True:
            try:
                async with self.slots:
                    return await operation()
            except Exception as exc:
                if not is_database_unavailable(exc):
                    raise
                if time.monotonic() >= deadline:
                    if isinstance(exc, DBAPIError):
                        raise
                    raise DBAPIError(None, None, exc) from exc
                log.warning("database unavailable, retrying", extra={"error": repr(exc)})
                await asyncio.sleep(DB_RETRY_INTERVAL_S)

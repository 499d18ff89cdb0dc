"""Run a unit of work again while PostgreSQL is down, instead of failing what was accepted."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.exc import DBAPIError

from shared.db import is_database_unavailable
from shared.rate_limit import Clock

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class DatabaseRetry:
    """How to wait out an outage: delays grow from `first_delay_s` by `growth` up to
    `max_delay_s`; past `give_up_after_s` (None: never) the last failure is raised."""

    first_delay_s: float = 0.1
    max_delay_s: float = 5.0
    growth: float = 2.0
    give_up_after_s: float | None = None
    clock: Clock = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    async def run(self, operation: Callable[[], Awaitable[T]], *, what: str = "work") -> T:
        """`operation()` (a whole transaction), repeated while the database is unavailable.

        Any other error is raised at once: a retry would only repeat a bug or bad data. Given
        up, the failure is raised as a `DBAPIError`, which every edge maps to "unavailable".
        One log line when the outage starts and one when it ends, not one per attempt.
        """
        delay = self.first_delay_s
        started: float | None = None
        while True:
            try:
                result = await operation()
            except Exception as exc:
                if not is_database_unavailable(exc):
                    raise
                now = self.clock()
                if started is None:
                    started = now
                    log.warning(
                        f"database unavailable, {what} paused",
                        extra={"error": describe_database_error(exc)},
                    )
                if self.give_up_after_s is not None and now - started >= self.give_up_after_s:
                    if isinstance(exc, DBAPIError):
                        raise
                    raise DBAPIError(None, None, exc) from exc
                await self.sleep(delay)
                delay = min(delay * self.growth, self.max_delay_s)
                continue
            if started is not None:
                log.info(
                    f"database back, {what} resumed",
                    extra={"paused_s": round(self.clock() - started, 2)},
                )
            return result


def describe_database_error(exc: BaseException) -> str:
    """The driver's message, without SQLAlchemy's echo of the statement and its parameters
    (which may hold message content)."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    return f"{type(cause).__name__}: {cause}"[:300]

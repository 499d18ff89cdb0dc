"""Gives back reservations nothing settled (e.g. no worker ever answered the request) and
forgets request counts of past minutes."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.budgets import ledger
from shared.db import transaction

log = logging.getLogger(__name__)


async def release_stale_forever(sessions: async_sessionmaker[AsyncSession], ttl_s: float) -> None:
    # Every gateway runs it; the DELETE makes concurrent runs harmless.
    interval_s = min(60.0, ttl_s / 4)
    while True:
        await asyncio.sleep(interval_s)
        try:
            async with transaction(sessions) as session:
                released = await ledger.release_stale(session, timedelta(seconds=ttl_s))
            if released:
                log.info("unsettled budget reservations released", extra={"count": released})
        except Exception as exc:
            log.warning("budget release failed, retrying later", extra={"error": repr(exc)})

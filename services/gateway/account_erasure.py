"""What happens to a deleted account's chat data (issue 11, item 2).

Policy: on `user.deleted` the account's conversations (with their messages) and assistants are
deleted; each conversation's `conversation.deleted` event tells analytics, which keeps its
aggregate metrics (counts, tokens, latency) under the opaque user id and no content. Idempotent:
a second run (another gateway, a replay of the revocation stream) finds nothing left to delete.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import delete

from services.chat.models import Assistant, Conversation
from shared.db import is_database_unavailable
from shared.events import ConversationDeleted, Event, UserDeleted
from shared.outbox import Outbox

log = logging.getLogger(__name__)

PRODUCER = "gateway"
RETRY_DELAYS_S = (0.5, 1, 2, 5, 10, 30, 60)


async def erase_account_data(outbox: Outbox, owner_id: str) -> int:
    """Delete everything `owner_id` owns in the chat schema; returns the conversations deleted."""
    async with outbox.unit_of_work() as session:
        deleted = await session.execute(
            delete(Conversation).where(Conversation.owner_id == owner_id).returning(Conversation.id)
        )
        conversation_ids = list(deleted.scalars())
        for conversation_id in conversation_ids:
            await outbox.stage(
                session,
                ConversationDeleted(
                    producer=PRODUCER, user_id=owner_id, conversation_id=conversation_id
                ),
            )
        await session.execute(delete(Assistant).where(Assistant.owner_id == owner_id))
    return len(conversation_ids)


class AccountEraser:
    """Runs `erase_account_data` for each `user.deleted`, in the background, retrying while the
    database is unavailable."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self._tasks: set[asyncio.Task[None]] = set()

    def on_revoked(self, event: Event) -> None:
        if isinstance(event, UserDeleted) and event.user_id is not None:
            task = asyncio.create_task(self._erase(event.user_id), name="account-erasure")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _erase(self, owner_id: str) -> None:
        for delay_s in (*RETRY_DELAYS_S, None):
            try:
                count = await erase_account_data(self._outbox, owner_id)
            except Exception as exc:
                if delay_s is None or not is_database_unavailable(exc):
                    log.warning(
                        "deleted account's data not erased",
                        extra={"user_id": owner_id, "error": repr(exc)},
                    )
                    return
                await asyncio.sleep(delay_s)
                continue
            if count:
                log.info("deleted account's data erased", extra={"user_id": owner_id})
            return

    async def stop(self) -> None:
        for task in tuple(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

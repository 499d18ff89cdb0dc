"""Claiming a request's reply, and the fencing that keeps one writer per reply.

The database is the arbiter: `messages.reply_to` is unique, and a reply row is changed only by
the worker holding its current `attempt` while it is `streaming` (a fencing token). A request
whose reply is finished is acknowledged without a second reply; a redelivered request whose reply
was left `streaming` by a dead worker is regenerated with `attempt + 1`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from services.chat.models import Message
from services.chat.replies import is_own_first_claim, may_take_over
from services.chat_worker import repository
from services.chat_worker.settings import ChatWorkerSettings
from services.chat_worker.worker_metrics import WorkerMetrics
from shared.db import driver_connection
from shared.events import MessageSent, ReplyStarted
from shared.outbox import Outbox

log = logging.getLogger(__name__)

PRODUCER = "chat_worker"


class Superseded(Exception):
    """Another attempt owns this reply now (or it is gone): stop without writing."""


@dataclass(frozen=True)
class Claim:
    """A reply this worker now owns (attempt `attempt`), and the request it answers."""

    reply_id: str
    attempt: int
    request: repository.Request

    def started_event(self) -> ReplyStarted:
        return ReplyStarted(
            producer=PRODUCER,
            user_id=self.request.owner_id,
            correlation_id=self.request.message_id,
            conversation_id=self.request.conversation_id,
            message_id=self.reply_id,
            reply_to=self.request.message_id,
            model=self.request.model,
            attempt=self.attempt,
            api_key_id=self.request.api_key_id,
        )


class ReplyClaims:
    """The claim's statements. The caller (service.py, the edge of a request) owns every unit
    of work and runs each under its database retry; nothing here commits, except the
    single-statement hot paths on the driver connection."""

    def __init__(
        self,
        settings: ChatWorkerSettings,
        engine: AsyncEngine,
        outbox: Outbox,
        metrics: WorkerMetrics,
        worker_id: str,
    ) -> None:
        self._worker_id = worker_id
        """Written into each reply this worker claims: gateways ask it alone about the reply."""
        self._settings = settings
        self._engine = engine
        self._outbox = outbox
        self._metrics = metrics

    async def claim_new(
        self, event: MessageSent, reply_id: str
    ) -> tuple[repository.Request | None, Claim | None]:
        """The request (None: no such user message) and, when its reply `reply_id` was created
        now, the claim on it (None: the message already has a reply). One statement.

        A first attempt stages no `reply.started` event: its `reply.started` frame tells the
        clients, and its outcome event (`reply.completed`, `reply.failed`, `reply.cancelled`)
        carries everything analytics keeps, `ttft_ms` and `duration_ms` included. The event
        marks a take-over (`take_over`), which nothing else reports.
        """
        async with driver_connection(self._engine) as connection:
            request, created = await repository.claim_request(
                connection,
                event.message_id,
                reply_id,
                default_model=self._settings.default_model,
                default_system_prompt=self._settings.default_system_prompt,
                worker_id=self._worker_id,
            )
        if request is None:
            log.info("request for a missing message dropped", extra={"id": event.message_id})
            return None, None
        return request, Claim(reply_id, 1, request) if created else None

    async def take_over(
        self,
        session: AsyncSession,
        request: repository.Request,
        redelivered: bool,
        own_reply_id: str,
    ) -> Claim | None:
        """Decide, under the reply's row lock, whether this worker answers a request whose
        reply exists: its own first claim, an abandoned reply (a new attempt), or neither."""
        existing = await repository.lock_reply(session, request.message_id)
        if existing is not None and is_own_first_claim(
            own_reply_id, existing.id, existing.attempt, existing.status
        ):
            return Claim(own_reply_id, 1, request)
        if existing is None or not self._may_take_over(existing, redelivered):
            self._metrics.duplicates_skipped += 1
            log.info(
                "request already answered or being answered",
                extra={"reply": existing.id if existing else None},
            )
            return None
        claim = Claim(existing.id, existing.attempt + 1, request)
        await repository.update_streaming_reply(
            session,
            claim.reply_id,
            existing.attempt,
            {"attempt": claim.attempt, "content": "", "seq": 0, "worker_id": self._worker_id},
        )
        await self._outbox.stage(session, claim.started_event())
        self._metrics.regenerated += 1
        log.info("regenerating an abandoned reply", extra={"reply": claim.reply_id})
        return claim

    def _may_take_over(self, existing: Message, redelivered: bool) -> bool:
        return may_take_over(
            existing.status,
            existing.updated_at,
            redelivered=redelivered,
            now=datetime.now(UTC),
            stale_after_s=self._settings.stale_reply_s,
        )

    async def next_attempt(self, session: AsyncSession, reply_id: str, attempt: int) -> None:
        """Fence off `attempt`: the reply starts over as `attempt + 1` (Superseded if this
        worker no longer holds `attempt`)."""
        if not await repository.update_streaming_reply(
            session, reply_id, attempt, {"attempt": attempt + 1, "content": "", "seq": 0}
        ):
            raise Superseded

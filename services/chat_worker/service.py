"""Turning a `message.sent` request into exactly one streamed, stored reply: the path of one
request through its parts — claim (`claim.py`), generation (`generation.py`), outcome
(`outcomes.py`) — each database step under `shared.db_retry`, holding a connection slot. Control
(`control.py`) and the frame clock (`frame_clock.py`) act on the replies in flight here.

This is the edge of a request, so it owns the units of work: a reply streams for seconds, and
no transaction stays open that long, so each database step is its own unit — the claim, a
take-over, a restart, the outcome. The claim and the outcome are single statements on
the driver connection (the documented hot-path exception); the take-over and the
restart open their session here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import openai
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.chat_worker.broadcast import FrameChannel
from services.chat_worker.claim import Claim, ReplyClaims, Superseded
from services.chat_worker.control import EarlyCancels, apply_command, cancel_reply
from services.chat_worker.frame_clock import FrameClock
from services.chat_worker.generation import ModelFailed, ReplyGeneration
from services.chat_worker.llm import StreamOutcome
from services.chat_worker.outcomes import ReplyOutcomes
from services.chat_worker.reply import ActiveReply, CoalescingPolicy
from services.chat_worker.settings import ChatWorkerSettings
from services.chat_worker.worker_metrics import WorkerMetrics
from shared.db_retry import DatabaseRetry
from shared.events import MessageSent
from shared.ids import IdKind, new_id
from shared.outbox import Outbox
from shared.queue_consumer import Disposition
from shared.stream import ControlCommand

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class ChatReplies:
    settings: ChatWorkerSettings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    outbox: Outbox
    frames: FrameChannel
    client: openai.AsyncOpenAI
    metrics: WorkerMetrics = field(default_factory=WorkerMetrics)
    active: dict[str, ActiveReply] = field(default_factory=dict)
    early_cancels: EarlyCancels = field(default_factory=EarlyCancels)
    policy: CoalescingPolicy = field(init=False)
    db_retry: DatabaseRetry = field(init=False)
    db_slots: asyncio.Semaphore = field(init=False)
    claims: ReplyClaims = field(init=False)
    generation: ReplyGeneration = field(init=False)
    outcomes: ReplyOutcomes = field(init=False)
    clock: FrameClock = field(init=False)

    def __post_init__(self) -> None:
        self.policy = CoalescingPolicy(
            self.settings.frame_interval_ms / 1000, self.settings.frame_max_chars
        )
        self.db_retry = DatabaseRetry(give_up_after_s=self.settings.db_retry_s)
        # Hundreds of replies share `db_pool_size` connections: beyond the pool, SQLAlchemy
        # opens and closes overflow connections, and each new one costs more than a query
        # (measured: the worker's CPU per reply fell from ~43 to ~27 ms without that churn).
        self.db_slots = asyncio.Semaphore(self.settings.db_pool_size)
        self.claims = ReplyClaims(
            self.settings, self.engine, self.outbox, self.metrics, self.frames.instance_id
        )
        self.generation = ReplyGeneration(
            self.settings,
            self.client,
            self.frames,
            lambda reply: self._db(lambda: self._start_over(reply)),
            self.metrics,
        )
        self.outcomes = ReplyOutcomes(self.engine, self.outbox, self.frames)
        self.clock = FrameClock(
            self.settings, self.policy, self.active, self.frames, self.outbox, self.db_slots
        )

    # --- one request --------------------------------------------------------------------

    async def handle_request(self, event: MessageSent, *, redelivered: bool) -> Disposition:
        """Generate the reply to `event`'s message unless it exists; what to do with the request."""
        self.metrics.in_flight += 1
        try:
            return await self._handle(event, redelivered)
        finally:
            self.metrics.in_flight -= 1

    async def _handle(self, event: MessageSent, redelivered: bool) -> Disposition:
        self.early_cancels.claim_started(event.conversation_id)
        try:
            return await self._claim_and_generate(event, redelivered)
        finally:
            self.early_cancels.claim_ended(event.conversation_id)

    async def _claim_and_generate(self, event: MessageSent, redelivered: bool) -> Disposition:
        # Chosen once: a claim retried after a lost connection recognises its own reply row.
        reply_id = new_id(IdKind.MESSAGE)
        try:
            claim = await self._db(lambda: self._claim(event, redelivered, reply_id))
        except DBAPIError as exc:
            log.warning("database unavailable, request goes back", extra={"error": repr(exc)})
            self.metrics.requeued += 1
            return Disposition.REQUEUE
        if claim is None:
            return Disposition.ACK
        reply = self._active(claim)
        self.frames.publish(reply.started_frame())
        superseded = self.active.get(reply.message_id)
        if superseded is not None and superseded.task is not None:
            # This worker's older delivery of the same request lost its channel: it stops.
            superseded.task.cancel()
        self.active[reply.message_id] = reply
        self.clock.reply_started()
        try:
            return await self._generate(reply, claim)
        finally:
            if self.active.get(reply.message_id) is reply:
                del self.active[reply.message_id]

    async def _db(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run `operation` (one unit of work) holding a connection slot, again while the
        database is unavailable; past `db_retry_s` it raises a `DBAPIError`."""

        async def in_slot() -> T:
            async with self.db_slots:
                return await operation()

        return await self.db_retry.run(in_slot, what="reply")

    async def _claim(self, event: MessageSent, redelivered: bool, reply_id: str) -> Claim | None:
        request, claim = await self.claims.claim_new(event, reply_id)
        if request is None:
            return None
        if claim is not None:
            # The request stays unacked until the final reply is stored, so if this worker dies
            # from here on, the redelivered request finds the reply and takes it over.
            return claim
        # Redelivered, a duplicate delivery, or this claim's own first try whose commit
        # outlived its connection.
        async with self.outbox.unit_of_work(wait_for_publish=False) as session:
            return await self.claims.take_over(session, request, redelivered, reply_id)

    async def _start_over(self, reply: ActiveReply) -> None:
        async with self.outbox.unit_of_work(wait_for_publish=False) as session:
            await self.claims.next_attempt(session, reply.message_id, reply.attempt)
        self.frames.publish(reply.restart(reply.attempt + 1))

    def _active(self, claim: Claim) -> ActiveReply:
        return ActiveReply(
            conversation_id=claim.request.conversation_id,
            message_id=claim.reply_id,
            reply_to=claim.request.message_id,
            model=claim.request.model,
            attempt=claim.attempt,
            policy=self.policy,
        )

    async def _generate(self, reply: ActiveReply, claim: Claim) -> Disposition:
        reply.task = asyncio.create_task(self.generation.stream_with_retries(reply, claim))
        early = self.early_cancels.take(reply)
        if early is not None:
            cancel_reply(reply, early.requested_by)
        try:
            outcome = await reply.task
            assert isinstance(outcome, StreamOutcome)
            await self._db(lambda: self.outcomes.store_completed(reply, claim, outcome))
            self.metrics.completed += 1
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if reply.cancel_requested_by is None or (current and current.cancelling()):
                if self.active.get(reply.message_id) is not reply:
                    self.metrics.superseded += 1
                    return Disposition.ACK
                raise
            await self._db(lambda: self.outcomes.store_cancelled(reply, claim))
            self.metrics.cancelled += 1
        except ModelFailed as failed:
            failure = failed.failure
            await self._db(lambda: self.outcomes.store_failed(reply, claim, failure))
            self.metrics.failed += 1
        except Superseded:
            self.metrics.superseded += 1
            log.info("reply taken over by another attempt", extra={"reply": reply.message_id})
        except DBAPIError as exc:
            # The reply stays `streaming`; the redelivered request regenerates it.
            log.warning("could not store the reply, request goes back", extra={"error": repr(exc)})
            self.metrics.requeued += 1
            return Disposition.REQUEUE
        return Disposition.ACK

    # --- what acts on the replies in flight ---------------------------------------------

    async def on_command(self, command: ControlCommand) -> bool:
        return apply_command(command, list(self.active.values()), self.frames, self.early_cancels)

    async def tick_forever(self) -> None:
        await self.clock.tick_forever()

    async def persist_partials(self) -> None:
        await self.clock.persist_partials()

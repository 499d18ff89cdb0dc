"""Turning a `message.sent` request into exactly one streamed, stored reply.

The database is the arbiter: `messages.reply_to` is unique, and a reply row is changed only by
the worker holding its current `attempt` while it is `streaming` (a fencing token). A request
whose reply is finished is acknowledged without a second reply; a redelivered request whose reply
was left `streaming` by a dead worker is regenerated with `attempt + 1`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any, TypeVar

import openai
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from services.chat_worker import repository
from services.chat_worker.broadcast import FrameChannel
from services.chat_worker.knowledge import NO_KNOWLEDGE, KnowledgeContext
from services.chat_worker.llm import ModelFailure, StreamOutcome, backoff_s, classify, stream_reply
from services.chat_worker.prompt import build_prompt
from services.chat_worker.reply import ActiveReply, CoalescingPolicy
from services.chat_worker.settings import ChatWorkerSettings
from services.gateway.models import Message, MessageStatus
from shared.db import driver_connection, is_database_unavailable, skip_commit_flush
from shared.events import (
    MessageSent,
    ReplyCancelled,
    ReplyCompleted,
    ReplyFailed,
    ReplyStarted,
)
from shared.ids import IdKind, new_id
from shared.outbox import Outbox, StagedEvent
from shared.stream import (
    CancelCommand,
    ControlCommand,
    ReplyCancelledFrame,
    ReplyCompletedFrame,
    ReplyFailedFrame,
    ResyncCommand,
    Usage,
)

log = logging.getLogger(__name__)

PRODUCER = "chat_worker"
DB_RETRY_INTERVAL_S = 1.0
TICK_MIN_S = 0.01

T = TypeVar("T")


class Disposition(Enum):
    ACK = "ack"
    REQUEUE = "requeue"


class Superseded(Exception):
    """Another attempt owns this reply now (or it is gone): stop without writing."""


class ModelFailed(Exception):
    def __init__(self, failure: ModelFailure) -> None:
        super().__init__(failure.code)
        self.failure = failure


@dataclass
class WorkerMetrics:
    in_flight: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    requeued: int = 0
    duplicates_skipped: int = 0
    regenerated: int = 0
    model_retries: int = 0
    superseded: int = 0


@dataclass(frozen=True)
class Claim:
    """A reply this worker now owns (attempt `attempt`), and the request it answers."""

    reply_id: str
    attempt: int
    request: repository.Request


@dataclass
class ChatReplies:
    settings: ChatWorkerSettings
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    outbox: Outbox
    frames: FrameChannel
    client: openai.AsyncOpenAI
    knowledge: KnowledgeContext | None = None
    metrics: WorkerMetrics = field(default_factory=WorkerMetrics)
    active: dict[str, ActiveReply] = field(default_factory=dict)
    _persisting: asyncio.Task[None] | None = None
    _db_slots: asyncio.Semaphore = field(init=False)
    policy: CoalescingPolicy = field(init=False)

    def __post_init__(self) -> None:
        self.policy = CoalescingPolicy(
            self.settings.frame_interval_ms / 1000, self.settings.frame_max_chars
        )
        # Hundreds of replies share `db_pool_size` connections: beyond the pool, SQLAlchemy
        # opens and closes overflow connections, and each new one costs more than a query
        # (measured: the worker's CPU per reply fell from ~43 to ~27 ms without that churn).
        self._db_slots = asyncio.Semaphore(self.settings.db_pool_size)

    # --- one request --------------------------------------------------------------------

    async def handle_request(self, event: MessageSent, *, redelivered: bool) -> Disposition:
        """Generate the reply to `event`'s message unless it exists; what to do with the request."""
        self.metrics.in_flight += 1
        try:
            return await self._handle(event, redelivered)
        finally:
            self.metrics.in_flight -= 1

    async def _handle(self, event: MessageSent, redelivered: bool) -> Disposition:
        # Chosen once: a claim retried after a lost connection recognises its own reply row.
        reply_id = new_id(IdKind.MESSAGE)
        try:
            claim = await self._with_db_retry(lambda: self._claim(event, redelivered, reply_id))
            if claim is None:
                return Disposition.ACK
            reply = self._active(claim)
            self.frames.publish(reply.started_frame())
            if claim.attempt == 1:
                # After the frame, so clients do not wait for it; a regenerated attempt staged
                # its event together with its claim.
                started = StagedEvent.of(self._started_event(claim))
                await self._with_db_retry(lambda: self._announce_start(started))
        except DBAPIError as exc:
            log.warning("database unavailable, request goes back", extra={"error": repr(exc)})
            self.metrics.requeued += 1
            return Disposition.REQUEUE
        superseded = self.active.get(reply.message_id)
        if superseded is not None and superseded.task is not None:
            # This worker's older delivery of the same request lost its channel: it stops.
            superseded.task.cancel()
        self.active[reply.message_id] = reply
        try:
            return await self._generate(reply, claim)
        finally:
            if self.active.get(reply.message_id) is reply:
                del self.active[reply.message_id]

    async def _claim(self, event: MessageSent, redelivered: bool, reply_id: str) -> Claim | None:
        async with driver_connection(self.engine) as connection:
            request, created = await repository.claim_request(
                connection,
                event.message_id,
                reply_id,
                default_model=self.settings.default_model,
                default_system_prompt=self.settings.default_system_prompt,
            )
        if request is None:
            log.info("request for a missing message dropped", extra={"id": event.message_id})
            return None
        if not created:
            # Redelivered, a duplicate delivery, or this claim's own first try whose commit
            # outlived its connection: decide under the reply's row lock.
            return await self._take_over(request, redelivered, reply_id)
        # The request stays unacked until the final reply is stored, so if this worker dies
        # from here on, the redelivered request finds the reply and takes it over.
        return Claim(reply_id, 1, request)

    async def _announce_start(self, started: StagedEvent) -> None:
        """Stage and publish `reply.started`. Lost only if this worker dies right here; the
        regenerated attempt announces itself."""
        async with driver_connection(self.engine) as connection:
            await repository.stage_event(connection, started)
        await self.outbox.publish_committed([started], wait=False)

    async def _take_over(
        self, request: repository.Request, redelivered: bool, own_reply_id: str
    ) -> Claim | None:
        async with self.outbox.unit_of_work(wait_for_publish=False) as session:
            existing = await repository.lock_reply(session, request.message_id)
            if (
                existing is not None
                and existing.id == own_reply_id
                and existing.attempt == 1
                and existing.status == MessageStatus.STREAMING
            ):
                return Claim(own_reply_id, 1, request)
            if existing is None or not self._may_take_over(existing, redelivered):
                self.metrics.duplicates_skipped += 1
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
                {"attempt": claim.attempt, "content": "", "seq": 0},
            )
            await self.outbox.stage(session, self._started_event(claim))
            self.metrics.regenerated += 1
            log.info("regenerating an abandoned reply", extra={"reply": claim.reply_id})
        return claim

    def _active(self, claim: Claim) -> ActiveReply:
        return ActiveReply(
            conversation_id=claim.request.conversation_id,
            message_id=claim.reply_id,
            reply_to=claim.request.message_id,
            model=claim.request.model,
            attempt=claim.attempt,
            policy=self.policy,
        )

    @staticmethod
    def _started_event(claim: Claim) -> ReplyStarted:
        return ReplyStarted(
            producer=PRODUCER,
            user_id=claim.request.owner_id,
            correlation_id=claim.request.message_id,
            conversation_id=claim.request.conversation_id,
            message_id=claim.reply_id,
            reply_to=claim.request.message_id,
            model=claim.request.model,
            attempt=claim.attempt,
        )

    def _may_take_over(self, existing: Message, redelivered: bool) -> bool:
        if existing.status != MessageStatus.STREAMING:
            return False
        if redelivered:
            # The broker gives a request back only when its holder's channel is gone.
            return True
        idle_s = (datetime.now(UTC) - existing.updated_at).total_seconds()
        return idle_s > self.settings.stale_reply_s

    async def _generate(self, reply: ActiveReply, claim: Claim) -> Disposition:
        reply.task = asyncio.create_task(self._stream_with_retries(reply, claim))
        try:
            outcome = await reply.task
            assert isinstance(outcome, StreamOutcome)
            await self._with_db_retry(lambda: self._store_completed(reply, claim, outcome))
            self.metrics.completed += 1
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if reply.cancel_requested_by is None or (current and current.cancelling()):
                if self.active.get(reply.message_id) is not reply:
                    self.metrics.superseded += 1
                    return Disposition.ACK
                raise
            await self._with_db_retry(lambda: self._store_cancelled(reply, claim))
            self.metrics.cancelled += 1
        except ModelFailed as failed:
            failure = failed.failure
            await self._with_db_retry(lambda: self._store_failed(reply, claim, failure))
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

    async def _stream_with_retries(self, reply: ActiveReply, claim: Claim) -> StreamOutcome:
        knowledge = NO_KNOWLEDGE
        if self.knowledge is not None:
            knowledge = await self.knowledge.for_reply(
                claim.request.assistant_id, claim.request.history[-1].content, reply.message_id
            )
        reply.sources = knowledge.sources
        messages = build_prompt(
            claim.request.system_prompt,
            claim.request.history,
            self.settings.context_budget_tokens,
            knowledge.prompt,
        )
        retries = 0
        while True:
            outcome = StreamOutcome()
            try:
                async for delta in stream_reply(
                    self.client,
                    model=claim.request.model,
                    messages=messages,
                    temperature=claim.request.temperature,
                    max_tokens=self.settings.max_reply_tokens,
                    outcome=outcome,
                ):
                    frame = reply.add_delta(delta)
                    if frame is not None:
                        self.frames.publish(frame)
                    elif reply.needs_first_frame():
                        asyncio.get_running_loop().call_soon(self._flush, reply)
                return outcome
            except Exception as exc:
                failure = classify(exc)
                if not failure.retryable or retries >= self.settings.llm_max_retries:
                    log.warning(
                        "reply failed",
                        extra={"reply": reply.message_id, "code": failure.code, "error": repr(exc)},
                    )
                    raise ModelFailed(failure) from exc
                retries += 1
                self.metrics.model_retries += 1
                log.info(
                    "model call failed, retrying",
                    extra={"reply": reply.message_id, "code": failure.code, "retry": retries},
                )
            await asyncio.sleep(backoff_s(retries - 1, self.settings))
            if reply.seq > 0 or reply.has_pending:
                # Clients saw part of the failed attempt: start the reply over as a new attempt.
                await self._with_db_retry(lambda: self._restart(reply))

    async def _restart(self, reply: ActiveReply) -> None:
        async with self.outbox.unit_of_work(wait_for_publish=False) as session:
            if not await repository.update_streaming_reply(
                session,
                reply.message_id,
                reply.attempt,
                {"attempt": reply.attempt + 1, "content": "", "seq": 0},
            ):
                raise Superseded
        self.frames.publish(reply.restart(reply.attempt + 1))

    # --- terminal states ----------------------------------------------------------------

    def _flush(self, reply: ActiveReply) -> None:
        frame = reply.flush()
        if frame is not None:
            self.frames.publish(frame)

    async def _store_completed(
        self, reply: ActiveReply, claim: Claim, outcome: StreamOutcome
    ) -> None:
        self._flush(reply)
        usage = outcome.usage or Usage(
            completion_tokens=outcome.chunks, total_tokens=outcome.chunks
        )
        frame = reply.completed_frame(usage, outcome.finish_reason)
        ttft_ms, duration_ms = reply.ttft_ms(), reply.elapsed_ms()
        await self._store_outcome(
            reply,
            frame,
            repository.FinalReply(
                status=MessageStatus.COMPLETE,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                ttft_ms=ttft_ms,
                duration_ms=duration_ms,
                finish_reason=outcome.finish_reason,
            ),
            ReplyCompleted(
                **self._event_fields(reply, claim),
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                ttft_ms=ttft_ms,
                duration_ms=duration_ms,
                finish_reason=outcome.finish_reason,
                sources=reply.sources,
            ),
        )

    async def _store_failed(self, reply: ActiveReply, claim: Claim, failure: ModelFailure) -> None:
        self._flush(reply)
        frame = reply.failed_frame(failure.code, failure.message)
        duration_ms = reply.elapsed_ms()
        await self._store_outcome(
            reply,
            frame,
            repository.FinalReply(
                status=MessageStatus.FAILED,
                error_code=failure.code,
                duration_ms=duration_ms,
            ),
            ReplyFailed(
                **self._event_fields(reply, claim),
                error_code=failure.code,
                duration_ms=duration_ms,
            ),
        )

    async def _store_cancelled(self, reply: ActiveReply, claim: Claim) -> None:
        self._flush(reply)
        frame = reply.cancelled_frame()
        duration_ms = reply.elapsed_ms()
        await self._store_outcome(
            reply,
            frame,
            repository.FinalReply(
                status=MessageStatus.CANCELLED,
                finish_reason="cancelled",
                ttft_ms=reply.ttft_ms(),
                duration_ms=duration_ms,
            ),
            ReplyCancelled(**self._event_fields(reply, claim), duration_ms=duration_ms),
        )

    @staticmethod
    def _event_fields(reply: ActiveReply, claim: Claim) -> dict[str, Any]:
        """Envelope and identity fields every reply outcome event carries."""
        return {
            "producer": PRODUCER,
            "user_id": claim.request.owner_id,
            "correlation_id": reply.reply_to,
            "conversation_id": reply.conversation_id,
            "message_id": reply.message_id,
            "reply_to": reply.reply_to,
            "model": reply.model,
        }

    async def _store_outcome(
        self,
        reply: ActiveReply,
        frame: ReplyCompletedFrame | ReplyFailedFrame | ReplyCancelledFrame,
        final: repository.FinalReply,
        event: ReplyCompleted | ReplyFailed | ReplyCancelled,
    ) -> None:
        """Store the reply's final state and its event in one statement, then send the
        terminal frame; only the worker holding the current attempt may write it."""
        staged = StagedEvent.of(event)
        try:
            async with driver_connection(self.engine) as connection:
                outcome = await repository.finish_reply(
                    connection,
                    reply.message_id,
                    reply.attempt,
                    frame.content,
                    frame.seq,
                    final,
                    staged,
                )
        except Exception:
            reply.seq -= 1  # the terminal frame was not sent; a retry numbers it again
            raise
        if outcome is repository.FinishOutcome.SUPERSEDED:
            raise Superseded
        if outcome is repository.FinishOutcome.STORED:
            await self.outbox.publish_committed([staged], wait=False)
        # ALREADY_STORED: a retry after a commit whose answer was lost with the connection.
        # Its event row (another event id) is in the outbox; the relay publishes that one.
        self.frames.publish(frame)

    async def _with_db_retry(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run `operation` (a whole transaction) again while the database is unavailable;
        past `db_retry_s` the last failure is raised as a `DBAPIError`."""
        deadline = time.monotonic() + self.settings.db_retry_s
        while True:
            try:
                async with self._db_slots:
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

    # --- control commands ---------------------------------------------------------------

    async def on_command(self, command: ControlCommand) -> None:
        replies = [r for r in self.active.values() if r.conversation_id == command.conversation_id]
        if isinstance(command, CancelCommand):
            for reply in replies:
                if command.message_id not in (None, reply.message_id, reply.reply_to):
                    continue
                if reply.cancel_requested_by is None and reply.task is not None:
                    reply.cancel_requested_by = command.requested_by
                    reply.task.cancel()
                    log.info("reply cancel requested", extra={"reply": reply.message_id})
        elif isinstance(command, ResyncCommand):
            for reply in replies:
                self.frames.publish(reply.snapshot_frame(command.request_id))

    # --- the clock: coalesced frames and stored partials --------------------------------

    def frame_interval_s(self) -> float:
        """The configured interval, stretched so this worker's frames/s stay within its cap."""
        base = self.settings.frame_interval_ms / 1000
        return max(base, len(self.active) / self.settings.max_frames_per_second)

    async def tick_forever(self) -> None:
        last_persist = time.monotonic()
        while True:
            self.policy.interval_s = self.frame_interval_s()
            await asyncio.sleep(max(self.settings.frame_interval_ms / 1000, TICK_MIN_S))
            now = time.monotonic()
            for reply in list(self.active.values()):
                if reply.due(now):
                    frame = reply.flush(now)
                    if frame is not None:
                        self.frames.publish(frame)
            if now - last_persist >= self.settings.persist_interval_s and (
                self._persisting is None or self._persisting.done()
            ):
                last_persist = now
                self._persisting = asyncio.create_task(self.persist_partials())

    async def persist_partials(self) -> None:
        """Store every streaming reply's text up to its current `seq`, in one statement."""
        changed = [r for r in self.active.values() if r.seq > max(r.persisted_seq, 0)]
        if not changed:
            return
        rows = [
            {"id": r.message_id, "attempt": r.attempt, "content": r.sent_text, "seq": r.seq}
            for r in changed
        ]
        stored = [(r.attempt, r.seq) for r in changed]
        try:
            async with self._db_slots, self.outbox.unit_of_work() as session:
                # Partials are a convenience for reconnecting clients, not a promise.
                await skip_commit_flush(session)
                await repository.persist_partials(session, rows)
        except Exception as exc:
            log.warning("storing partial replies failed", extra={"error": repr(exc)})
            return
        for reply, (attempt, seq) in zip(changed, stored, strict=True):
            if reply.attempt == attempt:
                reply.persisted_seq = max(reply.persisted_seq, seq)

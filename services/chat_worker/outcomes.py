"""Storing how a reply ended (completed, failed, cancelled) with its event, in one statement,
then sending its terminal frame."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from services.chat.models import MessageStatus
from services.chat_worker import repository
from services.chat_worker.broadcast import FrameChannel
from services.chat_worker.claim import PRODUCER, Claim, Superseded
from services.chat_worker.llm import ModelFailure, StreamOutcome
from services.chat_worker.metrics import observe_reply_outcome
from services.chat_worker.reply import ActiveReply
from shared.db import driver_connection
from shared.events import ReplyCancelled, ReplyCompleted, ReplyFailed
from shared.outbox import Outbox, StagedEvent
from shared.stream import ReplyCancelledFrame, ReplyCompletedFrame, ReplyFailedFrame, Usage


class ReplyOutcomes:
    """Each `store_*` is one statement; the caller runs it under its database retry."""

    def __init__(self, engine: AsyncEngine, outbox: Outbox, frames: FrameChannel) -> None:
        self._engine = engine
        self._outbox = outbox
        self._frames = frames

    async def store_completed(
        self, reply: ActiveReply, claim: Claim, outcome: StreamOutcome
    ) -> None:
        estimated = outcome.usage is None
        usage = outcome.usage or reply.estimated_usage(outcome.chunks)
        frame = reply.completed_frame(usage, outcome.finish_reason, estimated)
        ttft_ms, duration_ms = reply.ttft_ms(), reply.elapsed_ms()
        await self._store_outcome(
            reply,
            frame,
            repository.FinalReply(
                status=MessageStatus.COMPLETE,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                usage_estimated=estimated,
                ttft_ms=ttft_ms,
                duration_ms=duration_ms,
                finish_reason=outcome.finish_reason,
            ),
            ReplyCompleted(
                **_event_fields(reply, claim),
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                usage_estimated=estimated,
                ttft_ms=ttft_ms,
                duration_ms=duration_ms,
                finish_reason=outcome.finish_reason,
                sources=reply.sources,
            ),
        )

    async def store_failed(self, reply: ActiveReply, claim: Claim, failure: ModelFailure) -> None:
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
                **_event_fields(reply, claim),
                error_code=failure.code,
                duration_ms=duration_ms,
            ),
        )

    async def store_cancelled(self, reply: ActiveReply, claim: Claim) -> None:
        frame = reply.cancelled_frame()
        duration_ms = reply.elapsed_ms()
        # A stopped stream never reaches its usage chunk; what the model read and wrote until
        # then is estimated (no usage at all if the model was never called).
        estimated = reply.prompt is not None
        usage = reply.estimated_usage(chunks=0) if estimated else Usage()
        await self._store_outcome(
            reply,
            frame,
            repository.FinalReply(
                status=MessageStatus.CANCELLED,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                usage_estimated=estimated,
                finish_reason="cancelled",
                ttft_ms=reply.ttft_ms(),
                duration_ms=duration_ms,
            ),
            ReplyCancelled(
                **_event_fields(reply, claim),
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                usage_estimated=estimated,
                duration_ms=duration_ms,
            ),
        )

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
            async with driver_connection(self._engine) as connection:
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
            await self._outbox.publish_committed([staged], wait=False)
            observe_reply_outcome(event)
        # ALREADY_STORED: a retry after a commit whose answer was lost with the connection.
        # Its event row (another event id) is in the outbox; the relay publishes that one.
        self._frames.publish(frame)


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
        "api_key_id": claim.request.api_key_id,
    }

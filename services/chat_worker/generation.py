"""Generating a reply from the model: stream its deltas into frames, retry what is retryable,
and have the reply started over as a new attempt (`start_over`, a unit of work of the caller)
when clients saw part of a failed try."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import openai
from opentelemetry.trace import SpanKind

from services.chat_worker.broadcast import FrameChannel
from services.chat_worker.claim import Claim
from services.chat_worker.frame_clock import flush_pending
from services.chat_worker.knowledge import NO_KNOWLEDGE, KnowledgeContext
from services.chat_worker.llm import ModelFailure, StreamOutcome, backoff_s, classify, stream_reply
from services.chat_worker.prompt import build_prompt
from services.chat_worker.reply import ActiveReply
from services.chat_worker.settings import ChatWorkerSettings
from services.chat_worker.worker_metrics import WorkerMetrics
from shared import tracing
from shared.stream import ReplyError

log = logging.getLogger(__name__)


def reply_token_limit(requested: int | None, settings: ChatWorkerSettings) -> int | None:
    """`max_tokens` for the model call: the request's own (a `/v1` request's), else the
    worker's `max_reply_tokens`, never above `max_reply_tokens_cap`; None: the model's default."""
    limit = requested if requested is not None else settings.max_reply_tokens
    return None if limit is None else min(limit, settings.max_reply_tokens_cap)


class ModelFailed(Exception):
    def __init__(self, failure: ModelFailure) -> None:
        super().__init__(failure.code)
        self.failure = failure


class ReplyGeneration:
    def __init__(
        self,
        settings: ChatWorkerSettings,
        client: openai.AsyncOpenAI,
        frames: FrameChannel,
        start_over: Callable[[ActiveReply], Awaitable[None]],
        metrics: WorkerMetrics,
    ) -> None:
        self._settings = settings
        self._client = client
        self._frames = frames
        self._start_over = start_over
        self._metrics = metrics
        self.knowledge: KnowledgeContext | None = None
        """Excerpts of the assistant's files for the prompt (set by the composition root)."""

    async def stream_with_retries(self, reply: ActiveReply, claim: Claim) -> StreamOutcome:
        """The model's whole answer, its frames published on the way; `ModelFailed` when the
        model fails for good, `Superseded` when another attempt took the reply."""
        knowledge = NO_KNOWLEDGE
        if self.knowledge is not None:
            knowledge = await self.knowledge.for_reply(
                claim.request.assistant_id, claim.request.history[-1].content, reply.message_id
            )
        reply.sources = knowledge.sources
        messages = build_prompt(
            claim.request.system_prompt,
            claim.request.history,
            self._settings.context_budget_tokens,
            knowledge.prompt,
        )
        reply.prompt = messages
        max_tokens = reply_token_limit(claim.request.max_tokens, self._settings)
        retries = 0
        while True:
            outcome = StreamOutcome()
            try:
                with tracing.span("chat.completions", SpanKind.CLIENT, model=claim.request.model):
                    async for delta in stream_reply(
                        self._client,
                        model=claim.request.model,
                        messages=messages,
                        temperature=claim.request.temperature,
                        max_tokens=max_tokens,
                        outcome=outcome,
                    ):
                        frame = reply.add_delta(delta)
                        if frame is not None:
                            self._frames.publish(frame)
                        elif reply.needs_first_frame():
                            asyncio.get_running_loop().call_soon(flush_pending, self._frames, reply)
                reply.end_stream()
                return outcome
            except Exception as exc:
                failure = classify(exc)
                if not failure.retryable or retries >= self._settings.llm_max_retries:
                    log.warning(
                        "reply failed",
                        extra={
                            "reply": reply.message_id,
                            "code": failure.code,
                            "url": self._settings.llm_base_url,
                            "error": repr(exc),
                        },
                    )
                    raise ModelFailed(failure) from exc
                retries += 1
                self._metrics.model_retries += 1
                delay_s = backoff_s(retries - 1, self._settings)
                log.warning(
                    "model call failed, retrying",
                    extra={
                        "reply": reply.message_id,
                        "code": failure.code,
                        "retry": retries,
                        "retry_in_s": round(delay_s, 2),
                        "url": self._settings.llm_base_url,
                        "error": repr(exc),
                    },
                )
                # The client hears at once that its reply is being retried, and why.
                error = ReplyError(code=failure.code, message=failure.message)
                self._frames.publish(
                    reply.retrying_frame(retries, self._settings.llm_max_retries, error, delay_s)
                )
            await asyncio.sleep(delay_s)
            if reply.seq > 0 or reply.has_pending:
                # Clients saw part of the failed attempt: start the reply over as a new attempt.
                await self._start_over(reply)

"""Calling the model through the official OpenAI SDK, and naming what went wrong."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import cast

import httpx2
import openai
from openai.types.chat import ChatCompletionMessageParam

from services.chat_worker.settings import ChatWorkerSettings
from shared.stream import Usage


class StreamCut(Exception):
    """The model's stream ended without a finish_reason: the reply is incomplete."""


@dataclass(frozen=True)
class ModelFailure:
    code: str
    """Shown to the client (`reply.failed.error.code`) and counted by analytics."""
    message: str
    retryable: bool


def classify(exc: BaseException) -> ModelFailure:
    """What a model error means for this reply: its code and whether to try again."""
    if isinstance(exc, StreamCut):
        return ModelFailure("model_stream_interrupted", "The model stopped mid-reply.", True)
    if isinstance(exc, openai.APITimeoutError):
        return ModelFailure("model_timeout", "The model did not answer in time.", True)
    if isinstance(exc, openai.APIConnectionError):
        return ModelFailure("model_unreachable", "The model service is unreachable.", True)
    if isinstance(exc, openai.RateLimitError):
        return ModelFailure("model_rate_limited", "The model is rate limited.", True)
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return ModelFailure("model_auth_failed", "The model service refused our key.", False)
    if isinstance(exc, openai.NotFoundError):
        return ModelFailure("model_not_found", "The model does not exist.", False)
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code >= 500 or exc.status_code in (408, 409):
            return ModelFailure("model_unavailable", "The model service failed.", True)
        return ModelFailure("model_bad_request", "The model refused the request.", False)
    if isinstance(exc, openai.APIError):
        return ModelFailure("model_error", "The model reported an error.", False)
    return ModelFailure("internal_error", "The reply could not be generated.", False)


def backoff_s(retry: int, settings: ChatWorkerSettings) -> float:
    """Exponential backoff with full jitter, so many failing replies do not retry in step."""
    ceiling = min(settings.llm_retry_max_s, settings.llm_retry_base_s * 2**retry)
    return random.uniform(ceiling / 2, ceiling)


def create_client(settings: ChatWorkerSettings) -> openai.AsyncOpenAI:
    # Retries are ours (a cut stream must restart the reply), so the SDK does none.
    return openai.AsyncOpenAI(
        base_url=settings.llm_base_url,
        api_key=settings.llm_api_key or "not-needed",
        max_retries=0,
        http_client=openai.DefaultAsyncHttpx2Client(
            timeout=httpx2.Timeout(settings.llm_timeout_s, connect=settings.llm_connect_timeout_s),
            limits=httpx2.Limits(
                max_connections=settings.prefetch + 16,
                max_keepalive_connections=settings.prefetch + 16,
            ),
        ),
    )


@dataclass
class StreamOutcome:
    finish_reason: str | None = None
    usage: Usage | None = None
    chunks: int = 0


async def stream_reply(
    client: openai.AsyncOpenAI,
    *,
    model: str,
    messages: list[dict[str, str]],
    temperature: float | None,
    max_tokens: int | None,
    outcome: StreamOutcome,
) -> AsyncIterator[str]:
    """Yield content deltas; fill `outcome`; raise `StreamCut` if it ends unfinished."""
    stream = await client.chat.completions.create(
        model=model,
        messages=cast("list[ChatCompletionMessageParam]", messages),
        stream=True,
        stream_options={"include_usage": True},
        temperature=openai.omit if temperature is None else temperature,
        max_tokens=openai.omit if max_tokens is None else max_tokens,
    )
    async with stream:
        async for chunk in stream:
            if chunk.usage is not None:
                outcome.usage = Usage(
                    prompt_tokens=chunk.usage.prompt_tokens,
                    completion_tokens=chunk.usage.completion_tokens,
                    total_tokens=chunk.usage.total_tokens,
                )
            for choice in chunk.choices:
                if choice.finish_reason is not None:
                    outcome.finish_reason = choice.finish_reason
                content = choice.delta.content if choice.delta is not None else None
                if content:
                    outcome.chunks += 1
                    yield content
    if outcome.finish_reason is None:
        raise StreamCut(f"stream ended after {outcome.chunks} chunks without finish_reason")

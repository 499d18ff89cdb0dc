"""Calling the model through the official OpenAI SDK, and naming what went wrong."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx2
import openai
import orjson

from services.chat_worker.settings import ChatWorkerSettings
from shared import tracing
from shared.stream import Usage

MAX_EVENT_LINE_BYTES = 1 << 20
"""Longest line of the model's event stream read (a chunk's JSON is a few hundred bytes)."""


class StreamCut(Exception):
    """The model's stream ended without a finish_reason: the reply is incomplete."""


@dataclass(frozen=True)
class ModelFailure:
    code: str
    """Shown to the client (`reply.failed.error.code`) and counted by analytics."""
    message: str
    retryable: bool


def is_timeout(exc: BaseException) -> bool:
    """An `APITimeoutError` that really is one. The SDK's aiohttp transport reports a refused
    connection (or an unknown host) as a connect timeout; its cause says otherwise."""
    if not isinstance(exc, openai.APITimeoutError):
        return False
    cause = exc.__cause__
    while cause is not None:
        if isinstance(cause, aiohttp.ClientConnectorError):
            return False
        cause = cause.__cause__
    return True


def classify(exc: BaseException) -> ModelFailure:
    """What a model error means for this reply: its code and whether to try again."""
    if isinstance(exc, StreamCut):
        return ModelFailure("model_stream_interrupted", "The model stopped mid-reply.", True)
    if is_timeout(exc):
        return ModelFailure("model_timeout", "The model did not answer in time.", True)
    if isinstance(exc, openai.APIConnectionError):
        return ModelFailure("model_unreachable", "The model service is unreachable.", True)
    if isinstance(exc, openai.RateLimitError):
        return ModelFailure("model_rate_limited", "The model is rate limited.", True)
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return ModelFailure("model_auth_failed", "The model service refused our key.", False)
    if isinstance(exc, openai.NotFoundError):
        if _names_a_model(exc):
            return ModelFailure("model_not_found", "The model does not exist.", False)
        # A 404 that is not about a model: nothing serves chat completions at this URL
        # (most often a base URL without its /v1).
        return ModelFailure(
            "model_endpoint_not_found",
            "The model service has no chat completions API at its configured URL.",
            False,
        )
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code >= 500 or exc.status_code in (408, 409):
            return ModelFailure("model_unavailable", "The model service failed.", True)
        return ModelFailure("model_bad_request", "The model refused the request.", False)
    if isinstance(exc, openai.APIError):
        return ModelFailure("model_error", "The model reported an error.", False)
    return ModelFailure("internal_error", "The reply could not be generated.", False)


def _names_a_model(exc: openai.NotFoundError) -> bool:
    """Whether a 404 says the model is unknown (OpenAI's `model_not_found`, or a message about
    a model), rather than that the path does not exist."""
    if exc.code == "model_not_found":
        return True
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", body)
    message = error.get("message") if isinstance(error, dict) else None
    return isinstance(message, str) and "model" in message.lower()


def backoff_s(retry: int, settings: ChatWorkerSettings) -> float:
    """Exponential backoff with full jitter, so many failing replies do not retry in step."""
    ceiling = min(settings.llm_retry_max_s, settings.llm_retry_base_s * 2**retry)
    return random.uniform(ceiling / 2, ceiling)


def create_client(settings: ChatWorkerSettings) -> openai.AsyncOpenAI:
    # Retries are ours (a cut stream must restart the reply), so the SDK does none. The SDK's
    # aiohttp transport (its `aiohttp` extra) rather than httpcore: httpcore probes every idle
    # pooled connection's socket whenever a request starts or ends, which with dozens of
    # replies in flight was ~5 % of a busy worker's CPU (py-spy).
    return openai.AsyncOpenAI(
        base_url=settings.llm_base_url,
        api_key=settings.llm_api_key or "not-needed",
        max_retries=0,
        http_client=openai.DefaultAioHttpClient(
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
    """Yield content deltas; fill `outcome`; raise `StreamCut` if it ends unfinished.

    The SDK sends the request, authenticates and turns error statuses into its exceptions; the
    event stream is read here as lines of JSON. Building the SDK's typed chunk objects cost more
    CPU than everything else a reply does (measured: about half of a worker's time per reply).
    """
    # The SDK's generic `post` (its documented way to send a request it has no typed method
    # for) with the body already serialised: `chat.completions.create` walks every argument
    # through its TypedDict transform and serialises with the standard `json` encoder, which
    # together cost ~0.3 ms per reply plus ~13 ms for a 30-message history (measured). The SDK
    # still builds, authenticates and sends the request, and turns error statuses into its
    # exceptions; the raw response is read here.
    body: dict[str, object] = {
        "model": model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if temperature is not None:
        body["temperature"] = temperature
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    # `cast_to=httpx2.Response` with `stream=True`: the SDK hands back the response unread.
    response = await client.post(
        "/chat/completions",
        cast_to=httpx2.Response,
        content=orjson.dumps(body),
        options={"headers": tracing.inject_headers() or {}},
        stream=True,
    )
    done = False
    try:
        async for line in _event_stream_lines(response):
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                # Read on to the end of the body rather than break: a response left unread
                # is closed, and the next request would open a new connection.
                done = True
                continue
            for delta in _read_chunk(orjson.loads(data), outcome):
                yield delta
    except httpx2.TimeoutException as exc:
        if not done:
            raise openai.APITimeoutError(request=response.request) from exc
    except httpx2.TransportError as exc:
        if not done:  # after [DONE] the reply is whole; only the connection is lost
            raise StreamCut(f"stream broken after {outcome.chunks} chunks: {exc!r}") from exc
    finally:
        await response.aclose()
    if outcome.finish_reason is None:
        raise StreamCut(f"stream ended after {outcome.chunks} chunks without finish_reason")


async def _event_stream_lines(response: httpx2.Response) -> AsyncIterator[bytes]:
    """The event stream's lines, as bytes (orjson parses bytes). Not `aiter_lines`, which decodes
    every chunk to text first (with a charset lookup per chunk): at saturation it took 5.5 % of a
    busy worker's CPU, these lines 4 % (CPU-time profiles). Lines end with LF, CRLF or CR (the
    event-stream format); a CRLF split across two chunks yields one empty line more, which the
    format ignores."""
    pending = b""
    async for chunk in response.aiter_bytes():
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        if len(pending) > MAX_EVENT_LINE_BYTES:
            # A model server (or whatever answers at its URL) that never ends a line must not
            # grow this buffer without bound, hundreds of replies at a time.
            raise StreamCut(f"an event-stream line over {MAX_EVENT_LINE_BYTES} bytes")
        for line in lines:
            yield line
    if pending:
        yield pending


def _read_chunk(chunk: dict[str, Any], outcome: StreamOutcome) -> list[str]:
    if chunk.get("error"):
        error = chunk["error"]
        message = error.get("message") if isinstance(error, dict) else None
        raise StreamCut(f"model reported an error mid-stream: {message or error!r}")
    usage = chunk.get("usage")
    if usage:
        outcome.usage = Usage(
            prompt_tokens=usage.get("prompt_tokens") or 0,
            completion_tokens=usage.get("completion_tokens") or 0,
            total_tokens=usage.get("total_tokens") or 0,
        )
    deltas: list[str] = []
    for choice in chunk.get("choices") or ():
        if choice.get("finish_reason"):
            outcome.finish_reason = choice["finish_reason"]
        content = (choice.get("delta") or {}).get("content")
        if content:
            outcome.chunks += 1
            deltas.append(content)
    return deltas

"""OpenAI-compatible HTTP edge of mock_llm, plus the fault-injection admin routes tests use."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import struct
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from services.mock_llm.service import (
    EMBEDDING_DIMENSIONS,
    FaultPlan,
    FaultRule,
    MockStats,
    Reply,
    embed_text,
    expected_reply,
    last_user_message,
)
from services.mock_llm.settings import MockLLMSettings


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: Any = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    input: str | list[str] = Field(min_length=1)
    encoding_format: str = "float"
    dimensions: int | None = Field(default=None, ge=1, le=4096)


class FaultRequest(BaseModel):
    """Body of `POST /_faults`; see `FaultRule`."""

    model_config = ConfigDict(extra="forbid")

    status: int | None = Field(default=None, ge=400, le=599)
    cut_after: int | None = Field(default=None, ge=0)
    stall_after: int | None = Field(default=None, ge=0)
    stall_s: float = Field(default=3600.0, ge=0)
    tokens_per_second: float | None = Field(default=None, ge=0)
    ttft_ms: float | None = Field(default=None, ge=0)
    reply_tokens: int | None = Field(default=None, ge=1, le=100_000)
    write_window_ms: float | None = Field(default=None, ge=0)
    content: str | None = Field(default=None, min_length=1, max_length=100_000)
    omit_usage: bool = False
    times: int = Field(default=1, ge=-1)
    match: str | None = None


def _error(status: int, message: str, kind: str, code: str | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": None, "code": code}},
        status_code=status,
    )


class MockLLM:
    """State of one mock_llm process: settings, the fault plan and counters."""

    def __init__(self, settings: MockLLMSettings) -> None:
        self.settings = settings
        self.faults = FaultPlan()
        self.stats = MockStats()
        self.recorded: deque[dict[str, Any]] = deque(maxlen=settings.recorded_requests)
        """The latest requests as received, so tests can see exactly what reached the model."""


async def get_mock(request: Request) -> MockLLM:
    mock: MockLLM = request.app.state.mock
    return mock


Mock = Annotated[MockLLM, Depends(get_mock)]

router = APIRouter()


def _wrong_key(mock: MockLLM, request: Request) -> bool:
    expected = f"Bearer {mock.settings.api_key}"
    return bool(mock.settings.api_key) and request.headers.get("authorization") != expected


@router.get("/v1/models", response_model=None)
async def list_models(request: Request, mock: Mock) -> dict[str, Any] | JSONResponse:
    if _wrong_key(mock, request):
        return _error(401, "Incorrect API key.", "invalid_request_error", "invalid_api_key")
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "convoai-mock"}
            for name in mock.settings.models
        ],
    }


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request, mock: Mock) -> Response:
    mock.stats.requests += 1
    if _wrong_key(mock, request):
        return _error(401, "Incorrect API key.", "invalid_request_error", "invalid_api_key")
    messages = [m.model_dump() for m in body.messages]
    max_tokens = body.max_completion_tokens or body.max_tokens
    mock.recorded.append(
        {"kind": "chat", "model": body.model, "messages": messages, "max_tokens": max_tokens}
    )
    prompt = last_user_message(messages)
    fault = mock.faults.take(prompt)
    if fault is not None and fault.status is not None:
        mock.stats.errors_injected += 1
        return _error(fault.status, f"injected HTTP {fault.status}", "server_error", "injected")
    reply = expected_reply(
        messages,
        mock.settings,
        max_tokens,
        fault.reply_tokens if fault is not None else None,
        fault.content if fault is not None else None,
    )
    ttft_s, tps = _pace(mock.settings, fault)
    window_s = (
        fault.write_window_ms
        if fault is not None and fault.write_window_ms is not None
        else mock.settings.write_window_ms
    ) / 1000
    completion_id = f"chatcmpl-{secrets.token_hex(12)}"
    omit_usage = mock.settings.omit_usage or (fault is not None and fault.omit_usage)
    if not body.stream:
        duration_s = ttft_s + ((reply.completion_tokens - 1) / tps if tps else 0.0)
        if duration_s:
            await asyncio.sleep(duration_s)
        completion = _completion(completion_id, body.model, reply)
        if omit_usage:
            del completion["usage"]
        return JSONResponse(completion)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    include_usage = include_usage and not omit_usage
    chunks = _stream_chunks(
        mock, completion_id, body.model, reply, include_usage, ttft_s, tps, window_s, fault
    )
    return StreamingResponse(
        chunks, media_type="text/event-stream", headers={"cache-control": "no-cache"}
    )


def _pace(settings: MockLLMSettings, fault: FaultRule | None) -> tuple[float, float]:
    """(time to first token in seconds, tokens per second) for this call."""
    ttft_ms = settings.ttft_ms
    tps = settings.tokens_per_second
    if fault is not None:
        ttft_ms = fault.ttft_ms if fault.ttft_ms is not None else ttft_ms
        tps = fault.tokens_per_second if fault.tokens_per_second is not None else tps
    return ttft_ms / 1000, tps


def _completion(completion_id: str, model: str, reply: Reply) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.text, "refusal": None},
                "logprobs": None,
                "finish_reason": reply.finish_reason,
            }
        ],
        "usage": _usage(reply),
    }


def _usage(reply: Reply) -> dict[str, int]:
    return {
        "prompt_tokens": reply.prompt_tokens,
        "completion_tokens": reply.completion_tokens,
        "total_tokens": reply.prompt_tokens + reply.completion_tokens,
    }


async def _stream_chunks(
    mock: MockLLM,
    completion_id: str,
    model: str,
    reply: Reply,
    include_usage: bool,
    ttft_s: float,
    tokens_per_second: float,
    window_s: float,
    fault: FaultRule | None,
) -> AsyncIterator[bytes]:
    """SSE events exactly as OpenAI sends them: role chunk, one chunk per token, finish, usage."""
    stats = mock.stats
    stats.streams_started += 1
    stats.active_streams += 1
    # Every chunk shares this envelope; only the delta and finish_reason change.
    head = (
        f'data: {{"id":"{completion_id}","object":"chat.completion.chunk",'
        f'"created":{int(time.time())},"model":{json.dumps(model)},"system_fingerprint":null,'
        f'"choices":[{{"index":0,"delta":'
    )
    tail = ',"logprobs":null,"finish_reason":null}]' + (',"usage":null' if include_usage else "")
    tail += "}\n\n"
    stop_after = len(reply.tokens)
    cut = False
    if fault is not None and fault.cut_after is not None:
        stop_after, cut = min(stop_after, fault.cut_after), True
    if fault is not None and fault.stall_after is not None:
        stop_after, cut = min(stop_after, fault.stall_after), True
    finished = False
    try:
        start = time.monotonic()
        if ttft_s:
            await asyncio.sleep(ttft_s)
        interval = 1.0 / tokens_per_second if tokens_per_second else 0.0
        pending = [head + '{"role":"assistant","content":"","refusal":null}' + tail]
        for index in range(stop_after):
            if interval and index:
                due = start + ttft_s + index * interval
                delay = due - time.monotonic()
                if delay > window_s:
                    yield "".join(pending).encode()
                    pending.clear()
                    await asyncio.sleep(delay)
            pending.append(
                head
                + '{"content":'
                + json.dumps(reply.tokens[index], ensure_ascii=False)
                + "}"
                + tail
            )
            if index == 0 and interval:
                # The first token goes out on its own, so time-to-first-token is what was set.
                yield "".join(pending).encode()
                pending.clear()
        if cut:
            if pending:
                yield "".join(pending).encode()
            if fault is not None and fault.stall_after is not None:
                await asyncio.sleep(fault.stall_s)
            stats.streams_cut += 1
            return
        pending.append(
            head
            + "{}"
            + tail.replace('"finish_reason":null', f'"finish_reason":"{reply.finish_reason}"', 1)
        )
        if include_usage:
            pending.append(
                f'data: {{"id":"{completion_id}","object":"chat.completion.chunk",'
                f'"created":{int(time.time())},"model":{json.dumps(model)},'
                f'"system_fingerprint":null,"choices":[],"usage":{json.dumps(_usage(reply))}}}\n\n'
            )
        pending.append("data: [DONE]\n\n")
        yield "".join(pending).encode()
        finished = True
        stats.streams_completed += 1
    finally:
        stats.active_streams -= 1
        if not finished and not cut:
            stats.streams_disconnected += 1


@router.post("/v1/embeddings", response_model=None)
async def embeddings(body: EmbeddingRequest, request: Request, mock: Mock) -> Response:
    """Deterministic embeddings (`embed_text`); base64 or float, as the SDK asks."""
    mock.stats.embedding_requests += 1
    if mock.settings.api_key and request.headers.get("authorization") != (
        f"Bearer {mock.settings.api_key}"
    ):
        return _error(401, "Incorrect API key.", "invalid_request_error", "invalid_api_key")
    texts = [body.input] if isinstance(body.input, str) else body.input
    mock.recorded.append({"kind": "embeddings", "model": body.model, "input": texts})
    dimensions = body.dimensions or EMBEDDING_DIMENSIONS
    data = []
    for index, text in enumerate(texts):
        vector = embed_text(text, dimensions)
        encoded: Any = vector
        if body.encoding_format == "base64":
            encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = sum(len(t.split()) for t in texts)
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "model": body.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


@router.get("/_requests")
async def recorded_requests(mock: Mock) -> dict[str, Any]:
    """The latest requests received, oldest first (tests only)."""
    return {"requests": list(mock.recorded)}


@router.delete("/_requests", status_code=204)
async def forget_requests(mock: Mock) -> None:
    mock.recorded.clear()


@router.post("/_faults", status_code=201)
async def add_fault(body: FaultRequest, mock: Mock) -> dict[str, Any]:
    """Queue a fault for the next matching calls (tests only)."""
    mock.faults.add(FaultRule(**body.model_dump()))
    return {"pending": len(mock.faults.rules)}


@router.delete("/_faults", status_code=204)
async def clear_faults(mock: Mock) -> None:
    mock.faults.clear()


@router.get("/_config")
async def get_config(mock: Mock) -> dict[str, Any]:
    """What a client needs to predict replies with `expected_reply` (never the API key)."""
    return mock.settings.model_dump(exclude={"api_key"})


@router.get("/_stats")
async def get_stats(mock: Mock) -> dict[str, Any]:
    return {**vars(mock.stats), "pending_faults": len(mock.faults.rules)}

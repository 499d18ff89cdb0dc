"""The OpenAI-compatible API: `GET /v1/models`, `POST /v1/chat/completions` (docs/openai-api.md).

A completion request travels the chat path: the gateway stores it as a conversation of origin
`api` (hidden from the chat's lists) holding the request's messages, the last user message is
sent like any chat message (`message.sent` → `chat.requests` → a worker), and the reply's frames
come back on this gateway's stream queue. So any worker answers, a worker killed mid-reply is
replaced like in a chat turn, and analytics counts it like any reply.

Contents are kept only while the reply is generated (the worker reads the history from the
database), then blanked, unless the key says `store_content`; usage and timings stay.

Over 400 lines on purpose: one request's whole life (admission, dispatch, the streamed and the
whole answer, cancel on disconnect) is one object, `_Completion`, whose steps share its state;
the request schemas live in `openai_schemas.py` and the caller check in `api_caller.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request, status
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from sqlalchemy import update

from services.budgets.admission import Admission
from services.chat.models import (
    ORIGIN_API,
    Conversation,
    ConversationStatus,
    Message,
    MessageRole,
    MessageStatus,
)
from services.chat.replies import is_finished
from services.gateway.api_caller import CallerRefused, CallerUncheckable, resolve_caller
from services.gateway.api_keys import KeyOwner
from services.gateway.context import Gateway, get_gateway
from services.gateway.errors import ChatError, LimitReached, RateLimited
from services.gateway.fanout import StreamUnavailable
from services.gateway.openai_schemas import ChatCompletionRequest, error_body
from services.gateway.service import PRODUCER
from shared.events import ConversationCreated
from shared.ids import IdKind, new_id
from shared.stream import (
    CancelCommand,
    ReplyCancelledFrame,
    ReplyCompletedFrame,
    ReplyDeltaFrame,
    ReplyFailedFrame,
    ReplyStartedFrame,
    StreamFrame,
)

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["openai"])

POLL_INTERVAL_S = 0.5
"""With no frame for this long, the stored reply is read in case its frames were missed."""


class ApiError(Exception):
    def __init__(
        self,
        http_status: int,
        message: str,
        type_: str,
        code: str | None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.body = error_body(message, type_, code, param)
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body, status_code=self.http_status, headers=self.headers)


def _invalid(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", "invalid_request", param)


async def _caller(request: Request, gw: Gateway) -> KeyOwner:
    try:
        return await resolve_caller(gw, request.headers.get("authorization"))
    except CallerRefused as exc:
        raise ApiError(401, str(exc), "invalid_request_error", "invalid_api_key") from None
    except CallerUncheckable as exc:
        raise ApiError(
            503, str(exc), "server_error", "service_unavailable", headers={"Retry-After": "1"}
        ) from None


@router.get("/models", response_model=None)
async def list_models(request: Request) -> Response:
    gw = get_gateway(request)
    try:
        caller = await _caller(request, gw)
    except ApiError as exc:
        return exc.response()
    return JSONResponse(
        {
            "object": "list",
            "data": [
                {"id": name, "object": "model", "created": 0, "owned_by": "convoai"}
                for name in gw.chat.models.usable_by(caller.roles)
            ],
        }
    )


@router.post("/chat/completions", response_model=None)
async def chat_completions(request: Request) -> Response:
    gw = get_gateway(request)
    try:
        caller = await _caller(request, gw)
        body = _parse(await request.body(), gw, caller)
        completion = _Completion(gw, caller, body)
        await completion.dispatch()
    except ApiError as exc:
        log.info("openai request refused", extra={"status": exc.http_status})
        return exc.response()
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            completion.sse(include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    return await completion.whole()


def _parse(raw: bytes, gw: Gateway, caller: KeyOwner) -> ChatCompletionRequest:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise _invalid("Request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise _invalid("Request body must be a JSON object")
    try:
        body = ChatCompletionRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise _invalid(f"{param}: {first['msg']}", param) from None
    if body.model not in gw.chat.models.usable_by(caller.roles):
        # As OpenAI answers a model the key may not use: it does not exist for this caller.
        raise ApiError(
            404,
            f"The model `{body.model}` does not exist",
            "invalid_request_error",
            "model_not_found",
            "model",
        )
    total = sum(len(m.text) for m in body.messages)
    if total > gw.settings.max_message_length * 4:
        raise _invalid("messages are too long in total", "messages")
    if body.messages[-1].role != "user" or not body.messages[-1].text.strip():
        raise _invalid("The last message must be a non-empty user message", "messages")
    return body


def _turns(body: ChatCompletionRequest) -> tuple[str | None, list[tuple[str, str]]]:
    """The system prompt and the user/assistant turns, consecutive same-role turns joined
    (the chat stores a reply per user message)."""
    system = [m.text for m in body.messages if m.role in ("system", "developer")]
    turns: list[tuple[str, str]] = []
    for message in body.messages:
        if message.role in ("system", "developer"):
            continue
        if turns and turns[-1][0] == message.role:
            turns[-1] = (message.role, turns[-1][1] + "\n\n" + message.text)
        else:
            turns.append((message.role, message.text))
    if turns and turns[0][0] == "assistant":
        raise _invalid("An assistant message must follow a user message", "messages")
    return ("\n\n".join(system) if system else None), turns


def _usage(frame: ReplyCompletedFrame) -> dict[str, Any]:
    """OpenAI's usage object, plus `estimated`: true when the model reported no usage and the
    counts were estimated from the text (documented in docs/openai-api.md), never passed off
    as exact."""
    return {**frame.usage.model_dump(), "estimated": frame.usage_estimated}


class _FrameQueue:
    """A fan-out watcher that queues this request's frames."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[StreamFrame | None] = asyncio.Queue()

    def deliver(self, frame: StreamFrame, wire: str | None = None) -> None:
        self.queue.put_nowait(frame)

    def broker_recovered(self) -> None:
        self.queue.put_nowait(None)


class _Completion:
    def __init__(self, gw: Gateway, caller: KeyOwner, body: ChatCompletionRequest) -> None:
        self.gw = gw
        self.caller = caller
        self.body = body
        self.conversation_id = new_id(IdKind.CONVERSATION)
        self.message_id = ""
        self.created = int(time.time())
        self.reply_tokens = gw.admissions.reply_tokens(body.reply_limit)
        self.frames = _FrameQueue()
        self.watching = False
        self.finished = False

    @property
    def completion_id(self) -> str:
        return f"chatcmpl-{self.message_id}"

    async def dispatch(self) -> None:
        system_prompt, turns = _turns(self.body)
        owner = self.caller.user_id
        last = turns[-1][1]
        try:
            async with self.gw.unit_of_work() as session:
                session.add(
                    Conversation(
                        id=self.conversation_id,
                        owner_id=owner,
                        title="API request",
                        system_prompt=system_prompt,
                        model=self.body.model,
                        temperature=self.body.temperature,
                        status=ConversationStatus.ACTIVE.value,
                        origin=ORIGIN_API,
                        api_key_id=self.caller.key_id,
                        # The model is held to what the budget reserves for the reply.
                        max_tokens=self.reply_tokens,
                    )
                )
                await session.flush()
                self._add_history(session, turns[:-1])
                await self.gw.outbox.stage(
                    session,
                    ConversationCreated(
                        producer=PRODUCER,
                        user_id=owner,
                        conversation_id=self.conversation_id,
                        model=self.body.model,
                    ),
                )
                try:
                    await self.gw.fanout.watch(self.conversation_id, self.frames)
                    self.watching = True
                except StreamUnavailable:
                    pass  # the database poll alone still finds the reply
                # The message's statement admits it through the ledger (the user's and the key's
                # limits): refused, nothing of this transaction is stored or sent.
                accepted = await self.gw.chat.send_message(
                    session, owner, self.conversation_id, last, None, admission=self._admission()
                )
                self.message_id = accepted.message_id
        except LimitReached as exc:
            await self._unwatch()
            raise ApiError(
                429,
                exc.message,
                "rate_limit_exceeded" if isinstance(exc, RateLimited) else "insufficient_quota",
                exc.code,
                headers={"Retry-After": str(exc.retry_after_s)},
            ) from None
        except ChatError as exc:
            await self._unwatch()
            raise _invalid(exc.message, "messages") from None
        except BaseException:
            await self._unwatch()
            raise

    def _admission(self) -> Admission:
        return self.gw.admissions.api_request(
            self.caller.user_id,
            self.caller.key_id,
            sum(len(m.text) for m in self.body.messages),
            len(self.body.messages),
            self.reply_tokens,
        )

    def _add_history(self, session: Any, turns: list[tuple[str, str]]) -> None:
        # Earlier than the message being answered (stored with the transaction's now()), in order.
        start = datetime.now(UTC) - timedelta(seconds=len(turns) + 60)
        previous_user: str | None = None
        for index, (role, text) in enumerate(turns):
            message_id = new_id(IdKind.MESSAGE)
            session.add(
                Message(
                    id=message_id,
                    conversation_id=self.conversation_id,
                    role=role,
                    content=text,
                    status=MessageStatus.COMPLETE.value,
                    reply_to=previous_user if role == MessageRole.ASSISTANT else None,
                    seq=0,
                    attempt=1,
                    created_at=start + timedelta(seconds=index),
                )
            )
            previous_user = message_id if role == MessageRole.USER else None

    async def _unwatch(self) -> None:
        if self.watching:
            self.watching = False
            await self.gw.fanout.unwatch(self.conversation_id, self.frames)

    async def _events(self) -> AsyncIterator[StreamFrame]:
        """This request's frames until a terminal one; a frame missed (broker outage, lost
        binding) is made up from the stored reply."""
        deadline = time.monotonic() + self.gw.settings.wait_reply_timeout_s
        while True:
            try:
                frame = await asyncio.wait_for(self.frames.queue.get(), POLL_INTERVAL_S)
            except TimeoutError:
                frame = None
            if frame is not None:
                yield frame
                if isinstance(frame, ReplyCompletedFrame | ReplyFailedFrame | ReplyCancelledFrame):
                    return
                continue
            stored = await self._stored_terminal()
            if stored is not None:
                yield stored
                return
            if time.monotonic() > deadline:
                yield ReplyFailedFrame(
                    conversation_id=self.conversation_id,
                    message_id="",
                    reply_to=self.message_id,
                    seq=0,
                    error={"code": "timeout", "message": "No reply within the wait timeout"},
                )
                return

    async def _stored_terminal(self) -> StreamFrame | None:
        async with self.gw.unit_of_work() as session:
            reply = await self.gw.chat.find_reply(session, self.message_id)
        if reply is None or not is_finished(reply.status):
            return None
        common = {
            "conversation_id": self.conversation_id,
            "message_id": reply.id,
            "reply_to": self.message_id,
            "seq": reply.seq,
            "attempt": reply.attempt,
        }
        if reply.status == MessageStatus.COMPLETE:
            prompt, completion = reply.prompt_tokens or 0, reply.completion_tokens or 0
            return ReplyCompletedFrame(
                **common,
                content=reply.content,
                usage={
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                },
                usage_estimated=reply.usage_estimated,
                finish_reason=reply.finish_reason,
                model=reply.model or self.body.model,
            )
        if reply.status == MessageStatus.CANCELLED:
            return ReplyCancelledFrame(**common, content=reply.content)
        return ReplyFailedFrame(
            **common,
            content=reply.content,
            error={"code": reply.error_code or "failed", "message": "The reply failed"},
        )

    async def _finish(self) -> None:
        """Stop watching; blank the contents unless the key keeps them; cancel a reply still
        being generated (the client went away)."""
        await self._unwatch()
        if not self.finished:
            with contextlib.suppress(Exception):
                await self.gw.fanout.publish_control(
                    CancelCommand(
                        conversation_id=self.conversation_id,
                        message_id=None,
                        requested_by=self.caller.user_id,
                    )
                )
            log.info("openai stream cancelled by the client", extra={"id": self.message_id})
        if not self.caller.store_content and self.finished:
            async with self.gw.unit_of_work() as session:
                await session.execute(
                    update(Message)
                    .where(Message.conversation_id == self.conversation_id)
                    .values(content="")
                )

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None) -> str:
        chunk = {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.body.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    async def sse(self, include_usage: bool) -> AsyncIterator[str]:
        sent = 0
        """Characters of the reply already sent: a reply regenerated after a worker died is
        sent on from there."""
        received = ""
        try:
            yield self._chunk({"role": "assistant", "content": ""}, None)
            async for frame in self._events():
                if isinstance(frame, ReplyStartedFrame):
                    received = ""
                    continue
                if isinstance(frame, ReplyDeltaFrame):
                    received += frame.delta
                elif isinstance(frame, ReplyCompletedFrame | ReplyCancelledFrame):
                    received = frame.content
                if len(received) > sent:
                    yield self._chunk({"content": received[sent:]}, None)
                    sent = len(received)
                if isinstance(frame, ReplyCompletedFrame):
                    self.finished = True
                    yield self._chunk({}, frame.finish_reason or "stop")
                    if include_usage:
                        usage = {
                            "id": self.completion_id,
                            "object": "chat.completion.chunk",
                            "created": self.created,
                            "model": self.body.model,
                            "choices": [],
                            "usage": _usage(frame),
                        }
                        yield f"data: {json.dumps(usage)}\n\n"
                elif isinstance(frame, ReplyFailedFrame | ReplyCancelledFrame):
                    self.finished = True
                    message = (
                        frame.error.message
                        if isinstance(frame, ReplyFailedFrame)
                        else "The reply was cancelled"
                    )
                    error = error_body(message, "server_error", "reply_failed")
                    yield f"data: {json.dumps(error)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            await asyncio.shield(self._finish())

    async def whole(self) -> Response:
        terminal: StreamFrame | None = None
        try:
            async for frame in self._events():
                terminal = frame
            self.finished = True
        finally:
            await self._finish()
        if isinstance(terminal, ReplyCompletedFrame):
            return JSONResponse(
                {
                    "id": self.completion_id,
                    "object": "chat.completion",
                    "created": self.created,
                    "model": self.body.model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": terminal.content},
                            "finish_reason": terminal.finish_reason or "stop",
                        }
                    ],
                    "usage": _usage(terminal),
                }
            )
        message = (
            terminal.error.message
            if isinstance(terminal, ReplyFailedFrame)
            else "The reply was cancelled"
        )
        return JSONResponse(
            error_body(message, "server_error", "reply_failed"),
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        )

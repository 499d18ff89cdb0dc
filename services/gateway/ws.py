"""The chat WebSocket `/ws` (DESIGN §5): authentication, client frames, live reply frames.

Every socket has one reader (this module's `ChatSocket.run`) and one writer task draining a
bounded outgoing queue, so a slow client never stalls the fan-out of other sockets: when its
queue overflows it is closed with 1013.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, WebSocket
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from starlette.websockets import WebSocketDisconnect

from services.gateway import metrics
from services.gateway.context import Gateway, get_gateway
from services.gateway.fanout import StreamUnavailable
from services.gateway.models import MAX_TITLE_LENGTH, Message, MessageRole, MessageStatus
from services.gateway.schemas import (
    MAX_CLIENT_MESSAGE_ID_LENGTH,
    ConversationCreate,
    ConversationOut,
    MessageOut,
)
from services.gateway.service import ChatError, RateLimited, new_anonymous_owner_id
from shared import tracing
from shared.db import is_database_unavailable
from shared.security import MAX_TOKEN_LENGTH, InvalidToken, Principal, TokenType
from shared.stream import (
    CancelCommand,
    ReplyCancelledFrame,
    ReplyCompletedFrame,
    ReplyDeltaFrame,
    ReplyFailedFrame,
    ReplySnapshotFrame,
    ReplyStartedFrame,
    ResyncCommand,
    StreamFrame,
)

log = logging.getLogger(__name__)

router = APIRouter()

CLOSE_POLICY_VIOLATION = 1008
CLOSE_TRY_AGAIN_LATER = 1013
MAX_SUBSCRIPTIONS_PER_SOCKET = 100
SNAPSHOT_MESSAGES = 200
"""Newest stored messages a snapshot carries; older history is paged over REST."""
REMEMBERED_REPLIES = 64
AWAITING_REPLY_WINDOW = timedelta(minutes=5)
"""A user message younger than this without a reply may have one streaming unseen."""

ConversationId = Annotated[str, Field(min_length=1, max_length=64)]


class _ClientFrame(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class AuthFrame(_ClientFrame):
    type: Literal["auth"]
    token: str | None = Field(default=None, min_length=1, max_length=MAX_TOKEN_LENGTH)
    anonymous: bool = False


class SubscribeFrame(_ClientFrame):
    type: Literal["subscribe"]
    conversation_id: ConversationId


class UnsubscribeFrame(_ClientFrame):
    type: Literal["unsubscribe"]
    conversation_id: ConversationId


class SendMessageFrame(_ClientFrame):
    type: Literal["send_message"]
    conversation_id: ConversationId
    content: str = Field(min_length=1)
    client_message_id: str = Field(min_length=1, max_length=MAX_CLIENT_MESSAGE_ID_LENGTH)


class StartConversationFrame(_ClientFrame):
    type: Literal["start_conversation"]
    title: str | None = Field(default=None, max_length=MAX_TITLE_LENGTH)
    system_message: str | None = None
    assistant_id: str | None = Field(default=None, max_length=64)
    model: str | None = None


class EndConversationFrame(_ClientFrame):
    type: Literal["end_conversation"]
    conversation_id: ConversationId


class CancelFrame(_ClientFrame):
    type: Literal["cancel"]
    conversation_id: ConversationId
    message_id: str | None = Field(default=None, max_length=64)


class PingFrame(_ClientFrame):
    type: Literal["ping"]


ClientFrame = Annotated[
    AuthFrame
    | SubscribeFrame
    | UnsubscribeFrame
    | SendMessageFrame
    | StartConversationFrame
    | EndConversationFrame
    | CancelFrame
    | PingFrame,
    Field(discriminator="type"),
]
client_frame_adapter: TypeAdapter[ClientFrame] = TypeAdapter(ClientFrame)
CLIENT_FRAME_TYPES = frozenset(
    {
        "auth",
        "subscribe",
        "unsubscribe",
        "send_message",
        "start_conversation",
        "end_conversation",
        "cancel",
        "ping",
    }
)


class BadFrame(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _validation_summary(exc: ValidationError) -> str:
    # Field paths and reasons only: the offending input is never echoed back or logged.
    parts = [
        f"{'.'.join(str(p) for p in e['loc'][1:] or e['loc'])}: {e['msg']}"
        for e in exc.errors()[:3]
    ]
    return "; ".join(parts)


def parse_client_frame(raw: str | bytes, max_bytes: int) -> ClientFrame:
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode())
    if size > max_bytes:
        raise BadFrame("frame_too_large", f"frame of {size} bytes exceeds {max_bytes}")
    try:
        data = json.loads(raw)
    except ValueError:
        raise BadFrame("invalid_json", "frame is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadFrame("invalid_frame", "frame must be a JSON object")
    frame_type = data.get("type")
    if not isinstance(frame_type, str) or frame_type not in CLIENT_FRAME_TYPES:
        raise BadFrame("unknown_type", "unknown or missing frame type")
    try:
        return client_frame_adapter.validate_python(data)
    except ValidationError as exc:
        raise BadFrame("invalid_frame", _validation_summary(exc)) from None


@dataclass
class _ReplyState:
    attempt: int
    seq: int
    done: bool = False


@dataclass(frozen=True)
class Partial:
    message_id: str
    reply_to: str | None
    seq: int
    attempt: int
    content: str

    def as_frame(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "reply_to": self.reply_to,
            "seq": self.seq,
            "attempt": self.attempt,
            "content": self.content,
        }


class ConversationWatch:
    """One socket's view of one conversation: buffers frames while a snapshot is being built,
    then forwards each reply's frames once, in order, after the snapshot's `seq`."""

    def __init__(
        self,
        conversation_id: str,
        send: Callable[[dict[str, Any]], None],
        on_recovered: Callable[[ConversationWatch], None],
    ) -> None:
        self.conversation_id = conversation_id
        self._send = send
        self._on_recovered = on_recovered
        self._buffer: list[StreamFrame] | None = None
        self._replies: OrderedDict[str, _ReplyState] = OrderedDict()
        self._snapshot_request: str | None = None
        self._snapshots: dict[str, ReplySnapshotFrame] = {}
        self._snapshots_expected: set[str] = set()
        self._awaiting_replies: set[str] = set()
        self._snapshots_complete = asyncio.Event()

    def start_buffering(self) -> None:
        self._buffer = []

    def deliver(self, frame: StreamFrame) -> None:
        if isinstance(frame, ReplySnapshotFrame):
            self._collect_snapshot(frame)
        elif self._buffer is not None:
            self._buffer.append(frame)
            if isinstance(frame, ReplyStartedFrame) and frame.reply_to in self._awaiting_replies:
                # Its frames from seq 0 on are all in the buffer: no snapshot needed for it.
                self._awaiting_replies.discard(frame.reply_to)
                self._check_snapshots_complete()
        else:
            self._forward(frame)

    def broker_recovered(self) -> None:
        self._on_recovered(self)

    def expect_snapshots(
        self, request_id: str, message_ids: set[str], awaiting_replies: set[str]
    ) -> None:
        """Wait for snapshots of the streaming replies `message_ids`, and for a snapshot or a
        `reply.started` of a reply to each of the user messages `awaiting_replies`."""
        self._snapshot_request = request_id
        self._snapshots = {}
        self._snapshots_expected = set(message_ids)
        self._awaiting_replies = set(awaiting_replies)
        self._snapshots_complete.clear()
        self._check_snapshots_complete()

    async def wait_snapshots(self, timeout_s: float) -> dict[str, ReplySnapshotFrame]:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._snapshots_complete.wait(), timeout_s)
        self._snapshot_request = None
        self._awaiting_replies = set()
        return dict(self._snapshots)

    def _collect_snapshot(self, frame: ReplySnapshotFrame) -> None:
        if frame.request_id != self._snapshot_request:
            return
        known = self._snapshots.get(frame.message_id)
        if known is None or (frame.attempt, frame.seq) > (known.attempt, known.seq):
            self._snapshots[frame.message_id] = frame
        self._awaiting_replies.discard(frame.reply_to)
        self._check_snapshots_complete()

    def _check_snapshots_complete(self) -> None:
        if self._snapshots_expected <= self._snapshots.keys() and not self._awaiting_replies:
            self._snapshots_complete.set()

    def go_live(self, stored: Sequence[Message], partials: Sequence[Partial]) -> None:
        """The snapshot has been sent: replay what arrived meanwhile, then forward live."""
        self._replies.clear()
        for message in stored:
            if message.role == MessageRole.ASSISTANT and message.status != MessageStatus.STREAMING:
                self._remember(message.id, _ReplyState(message.attempt, message.seq, done=True))
        for partial in partials:
            self._remember(partial.message_id, _ReplyState(partial.attempt, partial.seq))
        buffered, self._buffer = self._buffer or [], None
        for frame in buffered:
            self._forward(frame)

    def _remember(self, message_id: str, state: _ReplyState) -> None:
        self._replies[message_id] = state
        self._replies.move_to_end(message_id)
        while len(self._replies) > REMEMBERED_REPLIES:
            self._replies.popitem(last=False)

    def _forward(self, frame: StreamFrame) -> None:
        state = self._replies.get(frame.message_id)
        if isinstance(frame, ReplyStartedFrame):
            if state is not None and frame.attempt <= state.attempt:
                return
            self._remember(frame.message_id, _ReplyState(frame.attempt, frame.seq))
        elif isinstance(frame, ReplyDeltaFrame):
            if state is not None:
                if state.done or frame.attempt < state.attempt:
                    return
                if frame.attempt == state.attempt and frame.seq <= state.seq:
                    return
            self._remember(frame.message_id, _ReplyState(frame.attempt, frame.seq))
        elif isinstance(frame, ReplyCompletedFrame | ReplyFailedFrame | ReplyCancelledFrame):
            if state is not None and (state.done or frame.attempt < state.attempt):
                return
            self._remember(frame.message_id, _ReplyState(frame.attempt, frame.seq, done=True))
        self._send(_client_frame(frame))


def _client_frame(frame: StreamFrame) -> dict[str, Any]:
    body: dict[str, Any] = frame.model_dump(mode="json")
    return body


class _Closing:
    def __init__(self, code: int, reason: str, flush: bool) -> None:
        self.code = code
        self.reason = reason
        self.flush = flush


class ChatSocket:
    """One authenticated (or authenticating) WebSocket connection."""

    def __init__(self, websocket: WebSocket, gateway: Gateway) -> None:
        self._ws = websocket
        self._gw = gateway
        self._settings = gateway.settings
        self._principal: Principal | None = None
        self._outgoing: deque[str] = deque()
        self._wakeup = asyncio.Event()
        self._closing: _Closing | None = None
        self._watches: dict[str, ConversationWatch] = {}
        self._subscription_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._errors = 0
        self._tokens = float(self._settings.ws_frame_burst)
        self._tokens_at = time.monotonic()
        self._anonymous = False
        self._expiry: asyncio.TimerHandle | None = None
        self._ephemeral: list[str] = []
        """Conversations of an anonymous socket, deleted when it closes."""

    # --- outgoing --------------------------------------------------------------------------

    def send(self, frame: dict[str, Any]) -> None:
        if self._closing is not None:
            return
        if len(self._outgoing) >= self._settings.ws_send_queue_size:
            self.close(CLOSE_TRY_AGAIN_LATER, "client too slow", flush=False)
            return
        self._outgoing.append(json.dumps(frame, separators=(",", ":")))
        self._wakeup.set()

    def close(self, code: int, reason: str, *, flush: bool = True) -> None:
        if self._closing is None:
            log.info(
                "closing websocket",
                extra={
                    "code": code,
                    "reason": reason,
                    "user_id": self._principal.user_id if self._principal else None,
                },
            )
            self._closing = _Closing(code, reason, flush)
            if not flush:
                self._outgoing.clear()
            self._wakeup.set()

    def error(self, code: str, message: str, **extra: Any) -> None:
        metrics.ERROR_FRAMES.labels(code).inc()
        self.send({"type": "error", "code": code, "message": message, **extra})

    async def _write_loop(self) -> None:
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self._outgoing:
                    await self._ws.send_text(self._outgoing.popleft())
                    metrics.FRAMES_SENT.inc()
                if self._closing is not None:
                    await self._ws.close(self._closing.code, self._closing.reason)
                    return
        except (WebSocketDisconnect, RuntimeError, OSError):
            # The client went away; the reader notices on its next receive.
            self._closing = self._closing or _Closing(1006, "gone", flush=False)

    # --- lifecycle -------------------------------------------------------------------------

    async def run(self) -> None:
        writer = asyncio.create_task(self._write_loop(), name="ws-writer")
        try:
            if await self._authenticate():
                await self._read_loop()
        finally:
            for task in tuple(self._tasks):
                task.cancel()
            if self._expiry is not None:
                self._expiry.cancel()
            for conversation_id, watch in tuple(self._watches.items()):
                await self._gw.fanout.unwatch(conversation_id, watch)
            self._watches.clear()
            await self._forget_ephemeral()
            if self._closing is None:
                writer.cancel()
            try:
                await asyncio.wait_for(writer, 5)
            except (TimeoutError, asyncio.CancelledError):
                writer.cancel()
            metrics.SOCKET_CLOSES.labels(str(self._closing.code if self._closing else 1006)).inc()

    async def _forget_ephemeral(self) -> None:
        if self._principal is None:
            return
        for conversation_id in self._ephemeral:
            try:
                await self._gw.chat.delete_conversation(self._principal.user_id, conversation_id)
            except Exception as exc:
                log.warning(
                    "ephemeral conversation not deleted",
                    extra={"conversation_id": conversation_id, "error": repr(exc)},
                )

    async def _receive(self, timeout_s: float | None = None) -> str | bytes | None:
        """The next frame's payload; None when the client has gone or the socket is closing."""
        if self._closing is not None:
            return None
        try:
            message = await asyncio.wait_for(self._ws.receive(), timeout_s)
        except TimeoutError:
            self.close(CLOSE_POLICY_VIOLATION, "authentication timeout")
            return None
        except (WebSocketDisconnect, RuntimeError):
            return None
        if message["type"] == "websocket.disconnect":
            self._closing = self._closing or _Closing(1000, "client closed", flush=False)
            self._wakeup.set()
            return None
        payload: str | bytes | None = message.get("text")
        if payload is None:
            payload = message.get("bytes") or b""
        return payload

    def _within_frame_rate(self) -> bool:
        now = time.monotonic()
        self._tokens = min(
            float(self._settings.ws_frame_burst),
            self._tokens + (now - self._tokens_at) * self._settings.ws_frames_per_second,
        )
        self._tokens_at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def _bad_frame(self, exc: BadFrame) -> None:
        self._errors += 1
        self.error(exc.code, exc.message)
        if self._errors >= self._settings.ws_max_errors:
            self.close(CLOSE_POLICY_VIOLATION, "too many bad frames")

    async def _authenticate(self) -> bool:
        token: str | None = self._ws.query_params.get("token")
        while token is None and not self._anonymous:
            raw = await self._receive(self._settings.ws_auth_timeout_s)
            if raw is None:
                return False
            try:
                frame = parse_client_frame(raw, self._settings.max_frame_bytes)
            except BadFrame as exc:
                self._bad_frame(exc)
                continue
            if not isinstance(frame, AuthFrame):
                self.error("unauthenticated", "the first frame must be auth")
                self.close(CLOSE_POLICY_VIOLATION, "not authenticated")
                return False
            if frame.anonymous and frame.token is None:
                if not self._settings.allow_anonymous:
                    self.error("anonymous_disabled", "anonymous chat is not enabled")
                    self.close(CLOSE_POLICY_VIOLATION, "not authenticated")
                    return False
                self._anonymous = True
            elif frame.token is None:
                self._bad_frame(BadFrame("invalid_frame", "token: field required"))
                continue
            token = frame.token
        if self._anonymous:
            self._principal = Principal(new_anonymous_owner_id(), "anonymous", frozenset(), "")
        else:
            assert token is not None
            try:
                self._principal = self._gw.verifier.verify_access(token)
            except InvalidToken:
                self.error("unauthorized", "invalid or expired token")
                self.close(CLOSE_POLICY_VIOLATION, "invalid token")
                return False
            self._expire_with(token)
        self.send(
            {
                "type": "ready",
                "user_id": self._principal.user_id,
                "username": self._principal.username,
                "anonymous": self._anonymous,
                "limits": {
                    "max_frame_bytes": self._settings.max_frame_bytes,
                    "max_message_length": self._settings.max_message_length,
                    "messages_per_minute": (
                        self._settings.anonymous_messages_per_minute
                        if self._anonymous
                        else self._settings.messages_per_minute
                    ),
                },
            }
        )
        return True

    def _expire_with(self, token: str) -> None:
        """Close the socket when its access token expires, unless a fresh one arrives first."""
        expires_at = float(self._gw.verifier.decode(token, TokenType.ACCESS)["exp"])
        if self._expiry is not None:
            self._expiry.cancel()
        loop = asyncio.get_running_loop()
        delay = max(0.0, expires_at - time.time())
        self._expiry = loop.call_later(delay, self._token_expired)

    def _token_expired(self) -> None:
        self.error("token_expired", "access token expired; reconnect with a fresh one")
        self.close(CLOSE_POLICY_VIOLATION, "token expired")

    def _reauthenticate(self, frame: AuthFrame) -> None:
        """A fresh token for the same user extends the socket's life (no reconnect needed)."""
        assert self._principal is not None
        if self._anonymous or frame.token is None:
            self.error("already_authenticated", "this socket is already authenticated")
            return
        try:
            principal = self._gw.verifier.verify_access(frame.token)
        except InvalidToken:
            self.error("unauthorized", "invalid or expired token")
            return
        if principal.user_id != self._principal.user_id:
            self.error("user_mismatch", "a socket stays with the user it authenticated as")
            return
        self._principal = principal
        self._expire_with(frame.token)
        self.send({"type": "reauthenticated", "user_id": principal.user_id})

    async def _read_loop(self) -> None:
        while True:
            raw = await self._receive()
            if raw is None:
                return
            if not self._within_frame_rate():
                self.error("rate_limited", "too many frames", retry_after=1)
                self.close(CLOSE_POLICY_VIOLATION, "too many frames")
                return
            try:
                frame = parse_client_frame(raw, self._settings.max_frame_bytes)
            except BadFrame as exc:
                metrics.FRAMES_RECEIVED.labels("invalid").inc()
                self._bad_frame(exc)
                continue
            metrics.FRAMES_RECEIVED.labels(frame.type).inc()
            await self._dispatch(frame)

    async def _dispatch(self, frame: ClientFrame) -> None:
        context: dict[str, Any] = {}
        if isinstance(frame, SendMessageFrame):
            context["client_message_id"] = frame.client_message_id
        conversation_id = getattr(frame, "conversation_id", None)
        if conversation_id is not None:
            context["conversation_id"] = conversation_id
        try:
            with tracing.turn_span(f"ws {frame.type}", **context):
                await self._handle(frame)
        except RateLimited as exc:
            self.error(exc.code, exc.message, retry_after=exc.retry_after_s, **context)
        except ChatError as exc:
            self.error(exc.code, exc.message, **context)
        except ValidationError as exc:
            self._bad_frame(BadFrame("invalid_frame", _validation_summary(exc)))
        except StreamUnavailable:
            self.error("unavailable", "live updates are unavailable; retry shortly", **context)
        except Exception as exc:
            if not is_database_unavailable(exc):
                raise
            log.warning("frame failed: database unavailable", extra={"error": repr(exc)})
            self.error("unavailable", "the service is temporarily unavailable; retry", **context)

    async def _handle(self, frame: ClientFrame) -> None:
        assert self._principal is not None
        user_id = self._principal.user_id
        chat = self._gw.chat
        if isinstance(frame, PingFrame):
            self.send({"type": "pong", "ts": time.time()})
        elif isinstance(frame, AuthFrame):
            self._reauthenticate(frame)
        elif isinstance(frame, SubscribeFrame):
            await chat.get_conversation(user_id, frame.conversation_id)
            async with self._subscription_lock:
                await self._subscribe(frame.conversation_id)
        elif isinstance(frame, UnsubscribeFrame):
            async with self._subscription_lock:
                watch = self._watches.pop(frame.conversation_id, None)
                if watch is not None:
                    await self._gw.fanout.unwatch(frame.conversation_id, watch)
            self.send({"type": "unsubscribed", "conversation_id": frame.conversation_id})
        elif isinstance(frame, SendMessageFrame):
            if frame.conversation_id not in self._watches:
                # Ownership first: a socket never watches another user's conversation. Then
                # watch before storing, so the reply's first frame cannot slip past it.
                await chat.get_conversation(user_id, frame.conversation_id)
                await self._watch_live(frame.conversation_id)
            accepted = await chat.send_message(
                user_id,
                frame.conversation_id,
                frame.content,
                frame.client_message_id,
                rate_key=self._rate_key(),
            )
            self.send(
                {
                    "type": "ack",
                    "client_message_id": frame.client_message_id,
                    "message_id": accepted.message.id,
                    "conversation_id": frame.conversation_id,
                    "duplicate": accepted.duplicate,
                }
            )
        elif isinstance(frame, StartConversationFrame):
            if self._anonymous and self._ephemeral:
                raise ChatError("an anonymous socket has one conversation")
            conversation = await chat.create_conversation(
                user_id,
                ConversationCreate(
                    title=frame.title,
                    system_prompt=frame.system_message,
                    assistant_id=frame.assistant_id,
                    model=frame.model,
                ),
            )
            if self._anonymous:
                self._ephemeral.append(conversation.id)
            await self._watch_live(conversation.id)
            self.send(
                {
                    "type": "conversation.started",
                    "conversation_id": conversation.id,
                    "conversation": ConversationOut.model_validate(conversation).model_dump(
                        mode="json"
                    ),
                }
            )
        elif isinstance(frame, EndConversationFrame):
            conversation = await chat.end_conversation(user_id, frame.conversation_id)
            self.send(
                {
                    "type": "conversation.ended",
                    "conversation_id": conversation.id,
                    "status": conversation.status,
                }
            )
        elif isinstance(frame, CancelFrame):
            await chat.get_conversation(user_id, frame.conversation_id)
            routed = await self._gw.fanout.publish_control(
                CancelCommand(
                    conversation_id=frame.conversation_id,
                    message_id=frame.message_id,
                    requested_by=user_id,
                )
            )
            if not routed:
                self.error(
                    "nothing_to_cancel",
                    "no reply is being generated in this conversation",
                    conversation_id=frame.conversation_id,
                )

    def _rate_key(self) -> str | None:
        # Anonymous ids are per socket; the client's address is what a reconnect keeps.
        if self._anonymous and self._ws.client is not None:
            return f"anon:{self._ws.client.host}"
        return None

    # --- subscriptions ---------------------------------------------------------------------

    def _new_watch(self, conversation_id: str) -> ConversationWatch:
        if len(self._watches) >= MAX_SUBSCRIPTIONS_PER_SOCKET:
            raise ChatError(f"at most {MAX_SUBSCRIPTIONS_PER_SOCKET} subscriptions per socket")
        return ConversationWatch(conversation_id, self.send, self._resync_after_recovery)

    async def _watch_live(self, conversation_id: str) -> None:
        """Forward this conversation's frames from now on, without a snapshot."""
        async with self._subscription_lock:
            if conversation_id in self._watches:
                return
            watch = self._new_watch(conversation_id)
            await self._gw.fanout.watch(conversation_id, watch)
            self._watches[conversation_id] = watch

    async def _subscribe(self, conversation_id: str) -> None:
        """Bind, read the stored messages, complete a streaming reply from its worker, send the
        snapshot, then forward only what comes after it (the seam of DESIGN §4.5)."""
        watch = self._watches.pop(conversation_id, None)
        if watch is not None:
            await self._gw.fanout.unwatch(conversation_id, watch)
        watch = self._new_watch(conversation_id)
        watch.start_buffering()
        await self._gw.fanout.watch(conversation_id, watch)
        self._watches[conversation_id] = watch
        try:
            await self._send_snapshot(watch)
        except BaseException:
            self._watches.pop(conversation_id, None)
            await self._gw.fanout.unwatch(conversation_id, watch)
            raise

    async def _send_snapshot(self, watch: ConversationWatch) -> None:
        assert self._principal is not None
        conversation_id = watch.conversation_id
        messages = await self._gw.chat.recent_messages(
            self._principal.user_id, conversation_id, SNAPSHOT_MESSAGES
        )
        streaming = [
            m
            for m in messages
            if m.role == MessageRole.ASSISTANT and m.status == MessageStatus.STREAMING
        ]
        partials = {m.id: Partial(m.id, m.reply_to, m.seq, m.attempt, m.content) for m in streaming}
        # A reply whose row the worker has not written yet streams only in its memory.
        answered = {m.reply_to for m in messages if m.reply_to is not None}
        recent = datetime.now(UTC) - AWAITING_REPLY_WINDOW
        awaiting = {
            m.id
            for m in messages
            if m.role == MessageRole.USER and m.id not in answered and m.created_at > recent
        }
        if partials or awaiting:
            request_id = secrets.token_urlsafe(12)
            watch.expect_snapshots(request_id, set(partials), awaiting)
            try:
                routed = await self._gw.fanout.publish_control(
                    ResyncCommand(conversation_id=conversation_id, request_id=request_id)
                )
            except StreamUnavailable:
                routed = False
            # Unrouted: no worker holds a reply here, so none will answer; whatever starts
            # from now on arrives live on the binding made before the read.
            answers = await watch.wait_snapshots(self._settings.resync_timeout_s if routed else 0)
            for message_id, snap in answers.items():
                known = partials.get(message_id)
                # The worker's memory is ahead of the stored partial unless a newer attempt
                # has already been stored.
                if known is None or (snap.attempt, snap.seq) >= (known.attempt, known.seq):
                    partials[message_id] = Partial(
                        snap.message_id, snap.reply_to, snap.seq, snap.attempt, snap.content
                    )
        stored = [m for m in messages if m.id not in partials]
        in_stream_order = [m.id for m in streaming]
        ordered = [partials[i] for i in in_stream_order] + [
            p for i, p in partials.items() if i not in in_stream_order
        ]
        self.send(
            {
                "type": "snapshot",
                "conversation_id": conversation_id,
                "messages": [MessageOut.model_validate(m).model_dump(mode="json") for m in stored],
                "partial": ordered[-1].as_frame() if ordered else None,
                "partials": [p.as_frame() for p in ordered],
            }
        )
        watch.go_live(stored, ordered)

    def _resync_after_recovery(self, watch: ConversationWatch) -> None:
        """After a broker outage frames may be missing: send this conversation a new snapshot."""

        async def resync() -> None:
            async with self._subscription_lock:
                if self._watches.get(watch.conversation_id) is not watch:
                    return
                watch.start_buffering()
                try:
                    await self._send_snapshot(watch)
                except (ChatError, StreamUnavailable) as exc:
                    watch.go_live([], [])
                    log.warning(
                        "resync after recovery failed",
                        extra={"conversation_id": watch.conversation_id, "error": repr(exc)},
                    )

        task = asyncio.create_task(resync(), name="ws-resync")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


@router.websocket("/ws")
async def chat_socket(websocket: WebSocket) -> None:
    gateway = get_gateway(websocket)
    origin = websocket.headers.get("origin")
    if origin is not None and origin not in gateway.settings.allowed_origins:
        log.info("websocket refused: origin not allowed", extra={"origin": origin[:200]})
        await websocket.close(code=CLOSE_POLICY_VIOLATION)
        metrics.SOCKET_CLOSES.labels(str(CLOSE_POLICY_VIOLATION)).inc()
        return
    await websocket.accept()
    with metrics.OPEN_SOCKETS.track_inprogress():
        await ChatSocket(websocket, gateway).run()

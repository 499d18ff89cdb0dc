"""The chat WebSocket `/ws` (docs/websocket-protocol.md): one `ChatSocket` per connection — its
lifecycle, the read loop, the dispatch of client frames, and its conversation subscriptions.

Its parts live beside it: the frame protocol (`protocol.py`), socket I/O and backpressure
(`socket_io.py`), authentication and token expiry (`socket_auth.py`), what each frame does
(`frame_handlers.py`), per-conversation ordering (`watch.py`) and the snapshot hand-over
(`snapshot.py`).
"""

from __future__ import annotations

import asyncio
import logging

from pydantic import ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from services.gateway import metrics
from services.gateway.context import Gateway, get_gateway
from services.gateway.errors import ChatError, LimitReached
from services.gateway.fanout import StreamUnavailable
from services.gateway.frame_handlers import FRAME_HANDLERS
from services.gateway.protocol import (
    CLOSE_POLICY_VIOLATION,
    BadFrame,
    ClientFrame,
    SendMessageFrame,
    parse_client_frame,
    validation_summary,
)
from services.gateway.snapshot import SNAPSHOT_MESSAGES, send_snapshot
from services.gateway.socket_auth import SocketAuth
from services.gateway.socket_io import FrameRate, SocketIO
from services.gateway.watch import ConversationWatch
from shared import tracing
from shared.db import is_database_unavailable
from shared.security import Principal

log = logging.getLogger(__name__)

CHAT_SOCKET_PATH = "/ws"
MAX_SUBSCRIPTIONS_PER_SOCKET = 100


class ChatSocket:
    """One authenticated (or authenticating) WebSocket connection; what only some sockets
    need is made on first use (a gateway holds thousands that mostly sit idle)."""

    def __init__(self, websocket: WebSocket, gateway: Gateway) -> None:
        self.gateway = gateway
        self._settings = gateway.settings
        self.io = SocketIO(websocket, self._settings.ws_send_queue_size)
        self.auth = SocketAuth(self.io, gateway, self._bad_frame, self._admit)
        self._admission: str | None = None
        """The key this socket is counted under in `gateway.sockets`, once admitted."""
        self._frame_rate = FrameRate(
            self._settings.ws_frames_per_second, self._settings.ws_frame_burst
        )
        self._watches: dict[str, ConversationWatch] = {}
        self._subscription_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] | None = None
        self._errors = 0
        self.ephemeral: list[str] = []
        """Conversations of an anonymous socket, deleted when it closes."""

    def _admit(self, principal: Principal) -> bool:
        """Count this socket against its user's (or anonymous address's) cap."""
        address = None
        if self.auth.anonymous:
            client = self.io.websocket.client
            address = client.host if client else "unknown"
        self._admission = self.gateway.sockets.admit(self, principal.user_id, address)
        return self._admission is not None

    def revoke_access(self, revoked_before: float) -> None:
        self.auth.revoke_access(revoked_before)

    @property
    def user_id(self) -> str:
        assert self.auth.principal is not None
        return self.auth.principal.user_id

    @property
    def roles(self) -> frozenset[str]:
        assert self.auth.principal is not None
        return self.auth.principal.roles

    # --- lifecycle -------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            if await self.auth.authenticate():
                await self._read_loop()
        finally:
            if self._admission is not None:
                self.gateway.sockets.release(self, self._admission)
            for task in tuple(self._tasks or ()):
                task.cancel()
            self.auth.stop()
            for conversation_id, watch in tuple(self._watches.items()):
                await self.gateway.fanout.unwatch(conversation_id, watch)
            self._watches.clear()
            await self._forget_ephemeral()
            await self.io.finish(5)
            metrics.SOCKET_CLOSES.labels(str(self.io.close_code)).inc()

    async def _forget_ephemeral(self) -> None:
        if self.auth.principal is None:
            return
        for conversation_id in self.ephemeral:
            try:
                async with self.gateway.unit_of_work() as session:
                    await self.gateway.chat.delete_conversation(
                        session, self.user_id, conversation_id
                    )
            except Exception as exc:
                log.warning(
                    "ephemeral conversation not deleted",
                    extra={"conversation_id": conversation_id, "error": repr(exc)},
                )

    def _bad_frame(self, exc: BadFrame) -> None:
        # One line per bad frame, never its content or a traceback.
        log.info(
            "bad websocket frame",
            extra={"code": exc.code, "user_id": self.io.user_id, "count": self._errors + 1},
        )
        self._errors += 1
        self.io.error(exc.code, exc.message)
        if self._errors >= self._settings.ws_max_errors:
            self.io.close(CLOSE_POLICY_VIOLATION, "too many bad frames")

    # --- client frames ---------------------------------------------------------------------

    async def _read_loop(self) -> None:
        while True:
            raw = await self.io.receive()
            if raw is None:
                return
            if not self._frame_rate.allow():
                self.io.error("rate_limited", "too many frames", retry_after=1)
                self.io.close(CLOSE_POLICY_VIOLATION, "too many frames")
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
        """Run the frame's handler; a refusal or an outage becomes an `error` frame."""
        context: dict[str, str] = {}
        if isinstance(frame, SendMessageFrame):
            context["client_message_id"] = frame.client_message_id
        conversation_id = getattr(frame, "conversation_id", None)
        if conversation_id is not None:
            context["conversation_id"] = conversation_id
        try:
            with tracing.turn_span(f"ws {frame.type}", context):
                await FRAME_HANDLERS[type(frame)](self, frame)
        except LimitReached as exc:
            self.io.error(
                exc.code, exc.message, retry_after=exc.retry_after_s, limit=exc.limit, **context
            )
        except ChatError as exc:
            self.io.error(exc.code, exc.message, **context)
        except ValidationError as exc:
            self._bad_frame(BadFrame("invalid_frame", validation_summary(exc)))
        except StreamUnavailable:
            self.io.error("unavailable", "live updates are unavailable; retry shortly", **context)
        except Exception as exc:
            if not is_database_unavailable(exc):
                raise
            log.warning("frame failed: database unavailable", extra={"error": repr(exc)})
            self.io.error("unavailable", "the service is temporarily unavailable; retry", **context)

    def rate_key(self) -> str | None:
        """Whom the budget ledger charges instead of the user: anonymous ids are per socket; the
        client's address is what a reconnect keeps."""
        client = self.io.websocket.client
        if self.auth.anonymous and client is not None:
            return f"anon:{client.host}"
        return None

    # --- subscriptions ---------------------------------------------------------------------

    def watches(self, conversation_id: str) -> bool:
        return conversation_id in self._watches

    def check_room_for_watch(self) -> None:
        if len(self._watches) >= MAX_SUBSCRIPTIONS_PER_SOCKET:
            raise ChatError(f"at most {MAX_SUBSCRIPTIONS_PER_SOCKET} subscriptions per socket")

    def _new_watch(self, conversation_id: str) -> ConversationWatch:
        self.check_room_for_watch()
        return ConversationWatch(conversation_id, self.io.send, self._resync_after_recovery)

    async def watch_live(self, conversation_id: str) -> None:
        """Forward this conversation's frames from now on, without a snapshot."""
        async with self._subscription_lock:
            if conversation_id in self._watches:
                return
            watch = self._new_watch(conversation_id)
            await self.gateway.fanout.watch(conversation_id, watch)
            self._watches[conversation_id] = watch

    async def unsubscribe(self, conversation_id: str) -> None:
        async with self._subscription_lock:
            watch = self._watches.pop(conversation_id, None)
            if watch is not None:
                await self.gateway.fanout.unwatch(conversation_id, watch)

    async def subscribe(self, conversation_id: str) -> None:
        """Check ownership, bind, read the stored messages (one unit of work), complete a
        streaming reply from its worker, send the snapshot, then forward only what comes after
        it (the resubscribe seam: ARCHITECTURE.md, "The path of a chat message")."""
        chat = self.gateway.chat
        async with self._subscription_lock:
            watch = None
            try:
                async with self.gateway.unit_of_work() as session:
                    await chat.get_conversation(session, self.user_id, conversation_id)
                    old = self._watches.pop(conversation_id, None)
                    if old is not None:
                        await self.gateway.fanout.unwatch(conversation_id, old)
                    watch = self._new_watch(conversation_id)
                    watch.start_buffering()
                    await self.gateway.fanout.watch(conversation_id, watch)
                    self._watches[conversation_id] = watch
                    messages = await chat.recent_messages(
                        session, self.user_id, conversation_id, SNAPSHOT_MESSAGES
                    )
                # The wait for the workers' snapshots holds no transaction.
                await send_snapshot(self.gateway, messages, watch, self.io.send)
            except BaseException:
                if watch is not None:
                    self._watches.pop(conversation_id, None)
                    await self.gateway.fanout.unwatch(conversation_id, watch)
                raise

    async def _send_snapshot(self, watch: ConversationWatch) -> None:
        async with self.gateway.unit_of_work() as session:
            messages = await self.gateway.chat.recent_messages(
                session, self.user_id, watch.conversation_id, SNAPSHOT_MESSAGES
            )
        await send_snapshot(self.gateway, messages, watch, self.io.send)

    def _resync_after_recovery(self, watch: ConversationWatch) -> None:
        """After a broker outage frames may be missing: send this conversation a new snapshot."""

        async def resync() -> None:
            async with self._subscription_lock:
                if self._watches.get(watch.conversation_id) is not watch:
                    return
                watch.start_buffering()
                try:
                    await self._send_snapshot(watch)
                except Exception as exc:
                    # Any failure (the database may still be down after a broker outage) must
                    # end the buffering, or frames would pile up unforwarded for ever; the
                    # client is told to subscribe again for a complete snapshot.
                    watch.go_live([], [])
                    self.io.error(
                        "unavailable",
                        "could not resynchronise after an outage; subscribe again",
                        conversation_id=watch.conversation_id,
                    )
                    log.warning(
                        "resync after recovery failed",
                        extra={"conversation_id": watch.conversation_id, "error": repr(exc)},
                    )

        task = asyncio.create_task(resync(), name="ws-resync")
        tasks = self._tasks = self._tasks or set()
        tasks.add(task)
        task.add_done_callback(tasks.discard)


class ChatSocketDoor:
    """Pure ASGI middleware, outermost of the app's own: the chat socket goes straight to
    `chat_socket`, past the HTTP middleware, the router and FastAPI's dependency machinery,
    which do nothing for it but keep a coroutine frame each (and exit stacks and scope copies)
    alive for as long as it is open: measured ~11 of the ~41 KiB of an idle socket
    (tracemalloc over 2 000 sockets; bench/chat_cost.py).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == CHAT_SOCKET_PATH:
            await chat_socket(WebSocket(scope, receive, send))
        else:
            await self.app(scope, receive, send)


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

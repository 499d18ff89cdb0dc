"""A WebSocket's I/O: a writer task draining a bounded outgoing queue (backpressure), the
close handshake, receiving with a timeout, and the client's frame rate.

A slow client never stalls the fan-out of other sockets: `send` only queues, and when a
socket's queue overflows it is closed with 1013 instead of growing.

The queue and its writer task exist only while there is something to write: an idle socket
(most of them, most of the time) holds neither, which measured ~2 KiB of its memory.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from typing import Any

from fastapi import WebSocket
from starlette.websockets import WebSocketDisconnect

from services.gateway import metrics
from services.gateway.protocol import (
    CLOSE_GONE,
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    CLOSE_TRY_AGAIN_LATER,
)
from shared.rate_limit import Clock, TokenBucket

log = logging.getLogger(__name__)


class _Closing:
    __slots__ = ("code", "flush", "reason")

    def __init__(self, code: int, reason: str, flush: bool) -> None:
        self.code = code
        self.reason = reason
        self.flush = flush


class FrameRate:
    """The client's frame rate: `burst` at once, `per_second` sustained."""

    __slots__ = ("_bucket", "_clock")

    def __init__(self, per_second: float, burst: int, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._bucket = TokenBucket(float(burst), per_second, clock())

    def allow(self) -> bool:
        return self._bucket.take(self._clock()) == 0


class SocketIO:
    """The outgoing queue and the receive side of one accepted WebSocket."""

    def __init__(self, websocket: WebSocket, send_queue_size: int) -> None:
        self.websocket = websocket
        self.user_id: str | None = None
        """Who the socket belongs to once authenticated; logged when it closes."""
        self._queue_size = send_queue_size
        self._outgoing: deque[str] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closing: _Closing | None = None

    @property
    def closing(self) -> bool:
        return self._closing is not None

    @property
    def close_code(self) -> int:
        return self._closing.code if self._closing is not None else CLOSE_GONE

    def send(self, frame: dict[str, Any] | str) -> None:
        """Queue `frame` (a dict, or a frame already encoded as JSON text) for the client."""
        if self._closing is not None:
            return
        outgoing = self._outgoing
        if outgoing is None:
            outgoing = self._outgoing = deque()
        elif len(outgoing) >= self._queue_size:
            self.close(CLOSE_TRY_AGAIN_LATER, "client too slow", flush=False)
            return
        outgoing.append(
            frame if isinstance(frame, str) else json.dumps(frame, separators=(",", ":"))
        )
        self._start_writer()

    def error(self, code: str, message: str, **extra: Any) -> None:
        metrics.ERROR_FRAMES.labels(code).inc()
        self.send({"type": "error", "code": code, "message": message, **extra})

    def close(self, code: int, reason: str, *, flush: bool = True) -> None:
        if self._closing is None:
            log.info(
                "closing websocket",
                extra={"code": code, "reason": reason, "user_id": self.user_id},
            )
            self._closing = _Closing(code, reason, flush)
            if not flush:
                self._outgoing = None
            self._start_writer()

    async def finish(self, timeout_s: float) -> None:
        """When the socket's session ends: let a close under way reach the client (at most
        `timeout_s`), or stop writing at once when nobody closed the socket."""
        writer = self._writer
        if writer is None:
            return
        if self._closing is None:
            writer.cancel()
        try:
            await asyncio.wait_for(writer, timeout_s)
        except (TimeoutError, asyncio.CancelledError):
            writer.cancel()

    def _start_writer(self) -> None:
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        """Send what is queued, then the close frame if the socket is closing; end when
        nothing is left (the next `send` starts a writer again)."""
        try:
            while outgoing := self._outgoing:
                await self.websocket.send_text(outgoing.popleft())
                metrics.FRAMES_SENT.inc()
            if self._closing is not None:
                await self.websocket.close(self._closing.code, self._closing.reason)
        except (WebSocketDisconnect, RuntimeError, OSError):
            # The client went away; the reader notices on its next receive.
            self._closing = self._closing or _Closing(CLOSE_GONE, "gone", flush=False)
        finally:
            # Nothing is awaited between the queue found empty and here: no frame is left
            # behind without a writer.
            self._writer = None
            self._outgoing = None

    async def receive(
        self, timeout_s: float | None = None, timeout_reason: str = "receive timeout"
    ) -> str | bytes | None:
        """The next frame's payload; None when the client has gone or the socket is closing
        (after `timeout_s` without a frame it is closed as a policy violation)."""
        if self._closing is not None:
            return None
        try:
            # `asyncio.timeout`, not `wait_for`: wait_for runs the receive in a task of its
            # own, one more task per frame, and one more held by every idle socket.
            async with asyncio.timeout(timeout_s):
                message = await self.websocket.receive()
        except TimeoutError:
            self.close(CLOSE_POLICY_VIOLATION, timeout_reason)
            return None
        except (WebSocketDisconnect, RuntimeError):
            return None
        if message["type"] == "websocket.disconnect":
            self._closing = self._closing or _Closing(CLOSE_NORMAL, "client closed", flush=False)
            self._outgoing = None
            return None
        payload: str | bytes | None = message.get("text")
        if payload is None:
            payload = message.get("bytes") or b""
        return payload

"""A WebSocket's I/O: one writer task draining a bounded outgoing queue (backpressure), the
close handshake, receiving with a timeout, and the client's frame rate.

A slow client never stalls the fan-out of other sockets: `send` only queues, and when a
socket's queue overflows it is closed with 1013 instead of growing.
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
    def __init__(self, code: int, reason: str, flush: bool) -> None:
        self.code = code
        self.reason = reason
        self.flush = flush


class FrameRate:
    """The client's frame rate: `burst` at once, `per_second` sustained."""

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
        self._outgoing: deque[str] = deque()
        self._wakeup = asyncio.Event()
        self._closing: _Closing | None = None

    @property
    def closing(self) -> bool:
        return self._closing is not None

    @property
    def close_code(self) -> int:
        return self._closing.code if self._closing is not None else CLOSE_GONE

    def send(self, frame: dict[str, Any]) -> None:
        if self._closing is not None:
            return
        if len(self._outgoing) >= self._queue_size:
            self.close(CLOSE_TRY_AGAIN_LATER, "client too slow", flush=False)
            return
        self._outgoing.append(json.dumps(frame, separators=(",", ":")))
        self._wakeup.set()

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
                self._outgoing.clear()
            self._wakeup.set()

    async def write_loop(self) -> None:
        try:
            while True:
                await self._wakeup.wait()
                self._wakeup.clear()
                while self._outgoing:
                    await self.websocket.send_text(self._outgoing.popleft())
                    metrics.FRAMES_SENT.inc()
                if self._closing is not None:
                    await self.websocket.close(self._closing.code, self._closing.reason)
                    return
        except (WebSocketDisconnect, RuntimeError, OSError):
            # The client went away; the reader notices on its next receive.
            self._closing = self._closing or _Closing(CLOSE_GONE, "gone", flush=False)

    async def receive(
        self, timeout_s: float | None = None, timeout_reason: str = "receive timeout"
    ) -> str | bytes | None:
        """The next frame's payload; None when the client has gone or the socket is closing
        (after `timeout_s` without a frame it is closed as a policy violation)."""
        if self._closing is not None:
            return None
        try:
            message = await asyncio.wait_for(self.websocket.receive(), timeout_s)
        except TimeoutError:
            self.close(CLOSE_POLICY_VIOLATION, timeout_reason)
            return None
        except (WebSocketDisconnect, RuntimeError):
            return None
        if message["type"] == "websocket.disconnect":
            self._closing = self._closing or _Closing(CLOSE_NORMAL, "client closed", flush=False)
            self._wakeup.set()
            return None
        payload: str | bytes | None = message.get("text")
        if payload is None:
            payload = message.get("bytes") or b""
        return payload

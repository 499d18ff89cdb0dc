"""A lean WebSocket client for bench/chat_cost.py's idle sockets: one asyncio.Protocol per socket
over a raw TCP connection, speaking only the part of RFC 6455 (and RFC 7692) that an idle
authenticated chat socket uses.

Why not the `websockets` client (which the benchmark used before): the idle-socket scenario measures
how fast the gateway opens sockets, but its client processes share the machine's two cores with
the gateway, and the `websockets` asyncio client (a task, a stream reader and the sans-I/O
protocol's generators per socket) spent about as much CPU per socket opened as the gateway
(0.72-0.77 ms against the gateway's 0.77-0.80 over 10 000 sockets), so on a busy machine it, not
the gateway, set the measured open rate. This client does per socket one connection, one request,
one frame out and one frame in, all from `data_received`, and one future to await: 0.24-0.31 ms,
the gateway's core 98% busy while opening. (`websockets`' sans-I/O ClientProtocol driven by such
a Protocol measured 0.36-0.49 ms against this one's 0.25-0.30, 2 000 sockets, one process.)
The frames, the upgrade and the close are bench/ws_client.py's, shared with the chat's users.

What a socket does, besides bench/ws_client.py's (upgrade, masked frames, permessage-deflate if
the server accepts it, answers to protocol pings, a clean close), as a browser's would:
- the `auth` frame with the token as soon as the upgrade is accepted, then `ready` awaited;
- afterwards, on demand, it sends a `{"type":"ping"}` text frame and awaits the `pong`.
Frames it does not wait for are ignored: an idle socket has nothing to do with them.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from ws_client import Endpoint, WebSocketProtocol


class IdleSocket(WebSocketProtocol):
    """One client socket: the first text frame is sent as soon as the upgrade is accepted; the
    caller awaits only the text frame of the type it expects next."""

    __slots__ = ("_expected", "_first_text", "_waiter")

    def __init__(self, request: bytes, key: bytes, first_text: str, expected: str) -> None:
        super().__init__(request, key)
        self._first_text = first_text
        self._expected: str | None = expected
        self._waiter: asyncio.Future[dict[str, Any]] = self._loop.create_future()

    async def ready(self) -> dict[str, Any]:
        """The frame `expected` at construction (after the upgrade and the first text frame)."""
        return await self._waiter

    async def ping(self) -> dict[str, Any]:
        """Send `{"type":"ping"}` and await the `pong` text frame."""
        self.send_text(b'{"type":"ping"}')  # ConnectionClosed if it is closed
        self._expected = "pong"
        self._waiter = self._loop.create_future()
        return await self._waiter

    def on_open(self) -> None:
        self.send_text(self._first_text.encode())

    def on_text(self, message: bytes) -> None:
        if self._expected is None:
            return
        frame = json.loads(message)
        if isinstance(frame, dict) and frame.get("type") == self._expected:
            self._expected = None
            if not self._waiter.done():
                self._waiter.set_result(frame)

    def on_failure(self, exc: Exception) -> None:
        """Whoever awaits a frame gets `exc` instead."""
        self._expected = None
        if not self._waiter.done():
            self._waiter.set_exception(exc)


class IdleClient:
    """Opens idle sockets on one WebSocket URL (`ws://host:port/path`)."""

    def __init__(self, url: str) -> None:
        self._endpoint = Endpoint(url)

    async def open(self, token: str) -> IdleSocket:
        """An authenticated socket: upgraded, `auth` sent with `token`, `ready` received."""
        request, key = self._endpoint.request()
        auth = json.dumps({"type": "auth", "token": token})
        loop = asyncio.get_running_loop()
        _, socket = await loop.create_connection(
            lambda: IdleSocket(request, key, auth, "ready"),
            self._endpoint.host,
            self._endpoint.port,
        )
        try:
            await socket.ready()
        except BaseException:  # a timeout or a failure: do not leave the connection open
            socket.abort()
            raise
        return socket

"""A lean WebSocket client for bench/chat_cost.py's idle sockets: one asyncio.Protocol per socket
over a raw TCP connection, speaking only the part of RFC 6455 (and RFC 7692) that an idle
authenticated chat socket uses.

Why not the `websockets` client the rest of the benchmark uses: the idle-socket scenario measures
how fast the gateway opens sockets, but its client processes share the machine's two cores with
the gateway, and the `websockets` asyncio client (a task, a stream reader and the sans-I/O
protocol's generators per socket) spent about as much CPU per socket opened as the gateway
(0.72-0.77 ms against the gateway's 0.77-0.80 over 10 000 sockets), so on a busy machine it, not
the gateway, set the measured open rate. This client does per socket one connection, one request,
one frame out and one frame in, all from `data_received`, and one future to await: 0.24-0.31 ms,
the gateway's core 98% busy while opening. (`websockets`' sans-I/O ClientProtocol driven by such
a Protocol measured 0.36-0.49 ms against this one's 0.25-0.30, 2 000 sockets, one process.)

What a socket does, as a browser's would:
- the HTTP/1.1 upgrade, offering `permessage-deflate; client_max_window_bits`; if the server
  accepts it, messages are compressed both ways (raw deflate, RSV1 on a message's first frame);
- masked client frames;
- the `auth` frame with the token as soon as the upgrade is accepted, then `ready` awaited;
- afterwards it answers the server's protocol pings (uvicorn closes a socket that does not
  answer them) and, on demand, sends a `{"type":"ping"}` text frame and awaits the `pong`;
- a clean close: a close frame (1000), then the server's close frame and EOF.
Frames it does not wait for are ignored: an idle socket has nothing to do with them.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import zlib
from typing import Any, cast
from urllib.parse import urlsplit

# RFC 6455 1.3: what the server hashes with the client's key into Sec-WebSocket-Accept.
ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# What Chrome and Firefox offer.
OFFERED_EXTENSIONS = "permessage-deflate; client_max_window_bits"
# RFC 7692 7.2.1: a compressed message's sync-flush tail, left out on the wire.
DEFLATE_TAIL = b"\x00\x00\xff\xff"
# A response head bigger than this is not an upgrade answer.
MAX_RESPONSE_HEAD = 16 * 1024

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002


class HandshakeRejected(Exception):
    """The server did not answer the upgrade with 101 and the right Sec-WebSocket-Accept."""


class ProtocolViolation(Exception):
    """The server sent something RFC 6455 or RFC 7692 does not allow."""


class ConnectionClosed(Exception):
    """The socket closed before the frame awaited arrived."""


def mask(payload: bytes, key: bytes) -> bytes:
    """XOR with the repeated 4-byte key, as one big-integer XOR (no Python loop per byte)."""
    n = len(payload)
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")).to_bytes(
        n, "little"
    )


def client_frame(opcode: int, payload: bytes, compressed: bool = False) -> bytes:
    """One final frame, masked with a fresh random key as RFC 6455 5.3 requires of clients."""
    key = os.urandom(4)
    n = len(payload)
    first = 0x80 | (0x40 if compressed else 0) | opcode
    if n < 126:
        head = bytes((first, 0x80 | n))
    elif n < 1 << 16:
        head = bytes((first, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((first, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + key + mask(payload, key)


class Deflate:
    """permessage-deflate with the parameters the server accepted (RFC 7692 7.1)."""

    __slots__ = ("_inflate", "client_window_bits", "server_no_context_takeover")

    def __init__(self, response: str) -> None:
        self.client_window_bits = 15
        self.server_no_context_takeover = False
        # Created on the first compressed message received: an idle socket may never get one.
        self._inflate: Any = None
        name, *params = [p.strip() for p in response.split(";")]
        if name != "permessage-deflate" or "," in response:
            raise HandshakeRejected(f"extensions not offered: {response}")
        for param in params:
            key, _, value = param.partition("=")
            key, value = key.strip(), value.strip().strip('"')
            if key == "server_no_context_takeover":
                self.server_no_context_takeover = True
            elif key == "client_max_window_bits" and value:
                self.client_window_bits = int(value)
            # Our inflater always has a 32 KiB window (enough for any server_max_window_bits),
            # and a fresh deflater per message (below) satisfies client_no_context_takeover.
            elif key not in ("server_max_window_bits", "client_no_context_takeover"):
                raise HandshakeRejected(f"unknown permessage-deflate parameter: {param}")

    def compress(self, message: bytes) -> bytes | None:
        """The message's compressed payload, or None to send it uncompressed (always allowed).

        A fresh deflater per message: the server's inflater may keep the context, but nothing
        obliges the sender to refer to it, and keeping a deflater per socket would hold
        ~260 KiB of zlib state on each of thousands of idle sockets for a frame a minute.
        """
        if self.client_window_bits < 9:  # zlib's raw deflate cannot keep to a 256-byte window
            return None
        deflater = zlib.compressobj(wbits=-self.client_window_bits)
        data = deflater.compress(message) + deflater.flush(zlib.Z_SYNC_FLUSH)
        return data[: -len(DEFLATE_TAIL)] if data.endswith(DEFLATE_TAIL) else data

    def decompress(self, payload: bytes) -> bytes:
        if self._inflate is None:
            self._inflate = zlib.decompressobj(wbits=-15)
        data: bytes = self._inflate.decompress(payload + DEFLATE_TAIL)
        if self.server_no_context_takeover:
            self._inflate = None
        return data


def accepted_upgrade(head: bytes, key: bytes) -> Deflate | None:
    """Check the server's answer to the upgrade; the negotiated compression, if any."""
    status, *lines = head.decode("latin-1").split("\r\n")
    if status.split(" ", 2)[1:2] != ["101"]:
        raise HandshakeRejected(status)
    headers: dict[str, list[str]] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    expected = base64.b64encode(hashlib.sha1(key + ACCEPT_GUID).digest()).decode()
    if headers.get("sec-websocket-accept") != [expected]:
        raise HandshakeRejected(f"wrong Sec-WebSocket-Accept {headers.get('sec-websocket-accept')}")
    if [v.lower() for v in headers.get("upgrade", [])] != ["websocket"]:
        raise HandshakeRejected(f"Upgrade: {headers.get('upgrade')}")
    if "upgrade" not in ",".join(headers.get("connection", [])).lower():
        raise HandshakeRejected(f"Connection: {headers.get('connection')}")
    extensions = ", ".join(headers.get("sec-websocket-extensions", []))
    return Deflate(extensions) if extensions else None


class IdleSocket(asyncio.Protocol):
    """One client socket: the upgrade and the first text frame are sent from the protocol's
    callbacks; the caller awaits only the text frame of the type it expects next."""

    __slots__ = (
        "_buffer",
        "_close_sent",
        "_closed",
        "_deflate",
        "_expected",
        "_first_text",
        "_key",
        "_loop",
        "_partial",
        "_partial_compressed",
        "_partial_text",
        "_request",
        "_transport",
        "_upgraded",
        "_waiter",
    )

    def __init__(self, request: bytes, key: bytes, first_text: str, expected: str) -> None:
        self._loop = asyncio.get_running_loop()
        self._request = request
        self._key = key
        self._first_text = first_text
        self._expected: str | None = expected
        self._waiter: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._upgraded = False
        self._deflate: Deflate | None = None
        self._close_sent = False
        # A fragmented message being received: its fragments, and its first frame's flags.
        self._partial: list[bytes] | None = None
        self._partial_compressed = False
        self._partial_text = False

    # --- what the caller awaits ----------------------------------------------------------

    async def ready(self) -> dict[str, Any]:
        """The frame `expected` at construction (after the upgrade and the first text frame)."""
        return await self._waiter

    async def ping(self) -> dict[str, Any]:
        """Send `{"type":"ping"}` and await the `pong` text frame."""
        if self._closed.done() or self._close_sent:
            raise ConnectionClosed("socket already closed")
        self._expected = "pong"
        self._waiter = self._loop.create_future()
        self._send_text('{"type":"ping"}')
        return await self._waiter

    async def close(self, timeout: float = 10.0) -> None:
        """Close frame 1000, then the server's close frame and EOF (or abort after `timeout`)."""
        if not self._closed.done() and not self._close_sent:
            self._send_close(CLOSE_NORMAL.to_bytes(2, "big"))
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._closed)
        except TimeoutError:
            self.abort()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, though uvloop's do not subclass asyncio.Transport.
        self._transport = cast(asyncio.Transport, transport)
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            if not self._upgraded:
                end = self._buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(self._buffer) > MAX_RESPONSE_HEAD:
                        raise HandshakeRejected("response head too long")
                    return
                self._deflate = accepted_upgrade(bytes(self._buffer[:end]), self._key)
                del self._buffer[: end + 4]
                self._upgraded = True
                self._send_text(self._first_text)
            self._read_frames()
        except (HandshakeRejected, ProtocolViolation, ValueError, zlib.error) as exc:
            self._fail(exc)
            if self._upgraded and not self._close_sent:
                self._send_close(CLOSE_PROTOCOL_ERROR.to_bytes(2, "big"))
            self.abort()

    def eof_received(self) -> bool | None:
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionClosed(str(exc) if exc else "connection closed"))
        if not self._closed.done():
            self._closed.set_result(None)

    # --- frames --------------------------------------------------------------------------

    def _read_frames(self) -> None:
        buffer = self._buffer
        at = 0
        while len(buffer) - at >= 2:
            first, second = buffer[at], buffer[at + 1]
            if second & 0x80:
                raise ProtocolViolation("a server frame was masked")
            length = second & 0x7F
            start = at + 2
            if length == 126:
                start = at + 4
                length = int.from_bytes(buffer[at + 2 : start], "big")
            elif length == 127:
                start = at + 10
                length = int.from_bytes(buffer[at + 2 : start], "big")
            end = start + length
            if len(buffer) < end:
                break
            self._frame(first, bytes(buffer[start:end]))
            at = end
        del buffer[:at]

    def _frame(self, first: int, payload: bytes) -> None:
        final, compressed, opcode = first & 0x80, first & 0x40, first & 0x0F
        if first & 0x30:
            raise ProtocolViolation("RSV2 or RSV3 set")
        if opcode & 0x8:  # a control frame: never fragmented nor compressed (RFC 6455 5.5)
            if not final or compressed or len(payload) > 125:
                raise ProtocolViolation(f"bad control frame {first:#x}")
            if opcode == OP_PING:
                if not self._close_sent:
                    self._write(client_frame(OP_PONG, payload))
            elif opcode == OP_CLOSE:
                if not self._close_sent:  # echo the server's code (RFC 6455 5.5.1)
                    self._send_close(payload[:2])
                self._fail(ConnectionClosed(f"closed by the server: {payload[:2].hex()}"))
            elif opcode != OP_PONG:
                raise ProtocolViolation(f"unknown control opcode {opcode:#x}")
            return
        if opcode == OP_CONTINUATION:
            if self._partial is None or compressed:
                raise ProtocolViolation("unexpected continuation frame")
            self._partial.append(payload)
        else:
            if self._partial is not None:
                raise ProtocolViolation("new message inside a fragmented one")
            if compressed and self._deflate is None:
                raise ProtocolViolation("RSV1 without permessage-deflate")
            self._partial = [payload]
            self._partial_compressed = bool(compressed)
            self._partial_text = opcode == OP_TEXT
        if not final:
            return
        message = b"".join(self._partial)
        self._partial = None
        if self._partial_compressed:
            assert self._deflate is not None
            message = self._deflate.decompress(message)
        if self._partial_text and self._expected is not None:
            self._on_text(message)

    def _on_text(self, message: bytes) -> None:
        frame = json.loads(message)
        if isinstance(frame, dict) and frame.get("type") == self._expected:
            self._expected = None
            if not self._waiter.done():
                self._waiter.set_result(frame)

    def _send_text(self, text: str) -> None:
        message = text.encode()
        compressed = self._deflate.compress(message) if self._deflate else None
        if compressed is None:
            self._write(client_frame(OP_TEXT, message))
        else:
            self._write(client_frame(OP_TEXT, compressed, compressed=True))

    def _send_close(self, code: bytes) -> None:
        self._close_sent = True
        self._write(client_frame(OP_CLOSE, code))

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _fail(self, exc: Exception) -> None:
        """Whoever awaits a frame gets `exc` instead."""
        self._expected = None
        if not self._waiter.done():
            self._waiter.set_exception(exc)


class IdleClient:
    """Opens idle sockets on one WebSocket URL (`ws://host:port/path`)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "ws" or parts.hostname is None:
            raise ValueError(f"a ws:// URL, not {url}")
        self._host = parts.hostname
        self._port = parts.port or 80
        authority = f"{self._host}:{self._port}" if parts.port else self._host
        # The request but for each socket's Sec-WebSocket-Key.
        self._request_head = (
            f"GET {parts.path or '/'} HTTP/1.1\r\n"
            f"Host: {authority}\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            "Sec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Extensions: {OFFERED_EXTENSIONS}\r\n"
            "Sec-WebSocket-Key: "
        ).encode()

    async def open(self, token: str) -> IdleSocket:
        """An authenticated socket: upgraded, `auth` sent with `token`, `ready` received."""
        key = base64.b64encode(os.urandom(16))
        request = self._request_head + key + b"\r\n\r\n"
        auth = json.dumps({"type": "auth", "token": token})
        loop = asyncio.get_running_loop()
        _, socket = await loop.create_connection(
            lambda: IdleSocket(request, key, auth, "ready"), self._host, self._port
        )
        try:
            await socket.ready()
        except BaseException:  # a timeout or a failure: do not leave the connection open
            socket.abort()
            raise
        return socket

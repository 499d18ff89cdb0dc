"""A lean WebSocket client for the benchmarks: one asyncio.Protocol per socket over a raw TCP
connection, speaking only the part of RFC 6455 (and RFC 7692) that a chat client uses.

Why not the `websockets` client: the benchmark's clients share the machine's two cores with the
stack they measure, and the `websockets` asyncio client (a task, a stream reader and the sans-I/O
protocol's generators per socket) spent about as much CPU per socket opened as the gateway, and
per chat turn a quarter to a third of the gateway's (0.32 ms on uvloop, 0.46 on asyncio's loop;
this client 0.17 and 0.23; 50 users back to back, bench/chat_cost.py and chat_load.py's
saturation), so it capped what it measured. Here the upgrade, every frame received and the
answers to the server's control frames are handled in `data_received`, and each whole text
message goes to the subclass's `on_text` as bytes (JSON parsers take bytes). Two users:
bench/idle_client.py (idle sockets: one frame out, one in) and bench/chat_load.py (the chat's
virtual users, `TextSocket`).

What a socket does, as a browser's would:
- the HTTP/1.1 upgrade, offering `permessage-deflate; client_max_window_bits`; if the server
  accepts it, messages are compressed both ways (raw deflate, RSV1 on a message's first frame);
- masked client frames;
- it answers the server's protocol pings (uvicorn closes a socket that does not answer them);
- messages over `max_size` bytes are refused (close 1009), as `websockets` does;
- a clean close: a close frame (1000), then the server's close frame and EOF.
Writes are not flow-controlled (no drain): benchmark clients send small frames and read all the
time.

Over 400 lines on purpose: it is one protocol (the upgrade, the frame reader and writer, the
extension and the close share one socket's state), and its two users share all of it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import zlib
from collections.abc import Callable
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
# The biggest message received, as `websockets`' default max_size (1 MiB) times four: a long
# reply's frames are well under it.
DEFAULT_MAX_SIZE = 4 * 1024 * 1024

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_TOO_BIG = 1009


class HandshakeRejected(Exception):
    """The server did not answer the upgrade with 101 and the right Sec-WebSocket-Accept."""


class ProtocolViolation(Exception):
    """The server sent something RFC 6455 or RFC 7692 does not allow."""

    close_code = CLOSE_PROTOCOL_ERROR


class MessageTooBig(ProtocolViolation):
    """A message over the socket's `max_size`."""

    close_code = CLOSE_TOO_BIG


class ConnectionClosed(Exception):
    """The socket closed before the frame awaited arrived, or before one could be sent."""


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

    def decompress(self, payload: bytes, max_size: int) -> bytes:
        if self._inflate is None:
            self._inflate = zlib.decompressobj(wbits=-15)
        data: bytes = self._inflate.decompress(payload + DEFLATE_TAIL, max_size + 1)
        if len(data) > max_size:
            raise MessageTooBig(f"a message over {max_size} bytes once inflated")
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


class Endpoint:
    """A `ws://host:port/path` URL, and the upgrade request for one of its sockets."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "ws" or parts.hostname is None:
            raise ValueError(f"a ws:// URL, not {url}")
        self.host = parts.hostname
        self.port = parts.port or 80
        authority = f"{self.host}:{self.port}" if parts.port else self.host
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

    def request(self) -> tuple[bytes, bytes]:
        """A fresh upgrade request and its Sec-WebSocket-Key."""
        key = base64.b64encode(os.urandom(16))
        return self._request_head + key + b"\r\n\r\n", key


class WebSocketProtocol(asyncio.Protocol):
    """One client socket: the upgrade, frames in and out, control frames and the close.
    Subclasses get `on_open` once the upgrade is accepted, `on_text` with each whole text message
    received, and `on_failure` when the socket fails or closes (perhaps more than once)."""

    __slots__ = (
        "_buffer",
        "_close_sent",
        "_closed",
        "_deflate",
        "_key",
        "_loop",
        "_max_size",
        "_needed",
        "_partial",
        "_partial_compressed",
        "_partial_size",
        "_partial_text",
        "_request",
        "_transport",
        "_upgraded",
    )

    def __init__(self, request: bytes, key: bytes, max_size: int = DEFAULT_MAX_SIZE) -> None:
        self._loop = asyncio.get_running_loop()
        self._request = request
        self._key = key
        self._max_size = max_size
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._transport: asyncio.Transport | None = None
        # Bytes received but not yet handled (a frame's start), and how many it takes to
        # handle them; most data arrives as whole frames and never waits here.
        self._buffer = bytearray()
        self._needed = 0
        self._upgraded = False
        self._deflate: Deflate | None = None
        self._close_sent = False
        # A fragmented message being received: its fragments, and its first frame's flags.
        self._partial: list[bytes] | None = None
        self._partial_size = 0
        self._partial_compressed = False
        self._partial_text = False

    # --- what subclasses do --------------------------------------------------------------

    def on_open(self) -> None:
        """The server accepted the upgrade."""

    def on_text(self, message: bytes) -> None:
        """A whole text message (UTF-8, not checked here: JSON parsers check it)."""

    def on_failure(self, exc: Exception) -> None:
        """The socket failed or closed: `exc` says why."""

    # --- what the caller does ------------------------------------------------------------

    def send_text(self, message: bytes) -> None:
        """Send one text message (UTF-8 bytes)."""
        if self._close_sent or self._transport is None or self._transport.is_closing():
            raise ConnectionClosed("socket already closed")
        compressed = self._deflate.compress(message) if self._deflate else None
        if compressed is None:
            self._transport.write(client_frame(OP_TEXT, message))
        else:
            self._transport.write(client_frame(OP_TEXT, compressed, compressed=True))

    @property
    def is_open(self) -> bool:
        """Upgraded or not yet, but neither closed nor closing."""
        return not self._closed.done() and not self._close_sent

    async def close(self, timeout: float = 10.0) -> None:
        """Close frame 1000, then the server's close frame and EOF (or abort after `timeout`)."""
        if self.is_open:
            self._send_close(CLOSE_NORMAL)
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
        try:
            if self._buffer:
                self._buffer += data
                if len(self._buffer) < self._needed:
                    return
                data = bytes(self._buffer)
                self._buffer.clear()
            if not self._upgraded:
                end = data.find(b"\r\n\r\n")
                if end < 0:
                    if len(data) > MAX_RESPONSE_HEAD:
                        raise HandshakeRejected("response head too long")
                    self._buffer += data
                    self._needed = len(data) + 1
                    return
                self._deflate = accepted_upgrade(data[:end], self._key)
                data = data[end + 4 :]
                self._upgraded = True
                self.on_open()
            self._read_frames(data)
        except Exception as exc:
            self.on_failure(exc)
            if not isinstance(exc, HandshakeRejected | ProtocolViolation | ValueError | zlib.error):
                # Not the server's fault but ours (a subclass's `on_text`): said loudly.
                self._loop.call_exception_handler(
                    {"message": "WebSocket message handling failed", "exception": exc}
                )
            if self._upgraded and not self._close_sent:
                self._send_close(getattr(exc, "close_code", CLOSE_PROTOCOL_ERROR))
            self.abort()

    def eof_received(self) -> bool | None:
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.on_failure(ConnectionClosed(str(exc) if exc else "connection closed"))
        if not self._closed.done():
            self._closed.set_result(None)

    # --- frames --------------------------------------------------------------------------

    def _read_frames(self, data: bytes) -> None:
        at = 0
        size = len(data)
        while size - at >= 2:
            first, second = data[at], data[at + 1]
            if second & 0x80:
                raise ProtocolViolation("a server frame was masked")
            length = second & 0x7F
            start = at + 2
            if length >= 126:
                start = at + (4 if length == 126 else 10)
                if size < start:  # the extended length is not all here yet
                    self._needed = start - at
                    break
                length = int.from_bytes(data[at + 2 : start], "big")
                if length > self._max_size:
                    raise MessageTooBig(f"a frame of {length} bytes")
            end = start + length
            if size < end:
                self._needed = end - at
                break
            self._frame(first, data[start:end])
            at = end
        else:
            self._needed = 2
        if at < size:
            self._buffer += data[at:]

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
                    self._close_sent = True
                    self._write(client_frame(OP_CLOSE, payload[:2]))
                self.on_failure(ConnectionClosed(f"closed by the server: {payload[:2].hex()}"))
            elif opcode != OP_PONG:
                raise ProtocolViolation(f"unknown control opcode {opcode:#x}")
            return
        if opcode == OP_CONTINUATION:
            if self._partial is None or compressed:
                raise ProtocolViolation("unexpected continuation frame")
            self._partial_size += len(payload)
            if self._partial_size > self._max_size:
                raise MessageTooBig(f"a fragmented message over {self._max_size} bytes")
            self._partial.append(payload)
        else:
            if self._partial is not None:
                raise ProtocolViolation("new message inside a fragmented one")
            if compressed and self._deflate is None:
                raise ProtocolViolation("RSV1 without permessage-deflate")
            if final:  # the usual case: a whole message in one frame
                if compressed:
                    assert self._deflate is not None
                    payload = self._deflate.decompress(payload, self._max_size)
                if opcode == OP_TEXT:
                    self.on_text(payload)
                return
            self._partial = [payload]
            self._partial_size = len(payload)
            self._partial_compressed = bool(compressed)
            self._partial_text = opcode == OP_TEXT
        if not final:
            return
        message = b"".join(self._partial)
        self._partial = None
        if self._partial_compressed:
            assert self._deflate is not None
            message = self._deflate.decompress(message, self._max_size)
        if self._partial_text:
            self.on_text(message)

    def _send_close(self, code: int) -> None:
        self._close_sent = True
        self._write(client_frame(OP_CLOSE, code.to_bytes(2, "big")))

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)


class TextSocket(WebSocketProtocol):
    """A socket whose text messages all go to one handler (`listen`); those received before it
    is given wait for it."""

    __slots__ = ("_handler", "_unclaimed", "opened")

    def __init__(self, request: bytes, key: bytes, max_size: int = DEFAULT_MAX_SIZE) -> None:
        super().__init__(request, key, max_size)
        self.opened: asyncio.Future[None] = self._loop.create_future()
        self._handler: Callable[[bytes], None] | None = None
        self._unclaimed: list[bytes] = []

    def listen(self, handler: Callable[[bytes], None]) -> None:
        self._handler = handler
        unclaimed, self._unclaimed = self._unclaimed, []
        for message in unclaimed:
            handler(message)

    def on_open(self) -> None:
        if not self.opened.done():
            self.opened.set_result(None)

    def on_text(self, message: bytes) -> None:
        if self._handler is None:
            self._unclaimed.append(message)
        else:
            self._handler(message)

    def on_failure(self, exc: Exception) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc)


async def connect(url: str, timeout: float = 30.0, max_size: int = DEFAULT_MAX_SIZE) -> TextSocket:
    """A socket on `url`, upgraded (within `timeout` s, connecting included)."""
    endpoint = Endpoint(url)
    request, key = endpoint.request()
    loop = asyncio.get_running_loop()
    socket: TextSocket | None = None
    try:
        async with asyncio.timeout(timeout):
            _, socket = await loop.create_connection(
                lambda: TextSocket(request, key, max_size), endpoint.host, endpoint.port
            )
            await socket.opened
    except BaseException:  # a timeout or a failure: do not leave the connection open
        if socket is not None:
            socket.abort()
        raise
    return socket

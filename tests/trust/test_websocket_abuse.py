"""WebSocket abuse on a real gateway (issue 11, items 4, 5, 6, 8): a NUL in a message, deeply
nested JSON, hundreds of sockets per user, a conversation over the per-socket limit. Each gets
an error frame or a documented close, costs one log line, and creates nothing."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets

from services.gateway.ws import MAX_SUBSCRIPTIONS_PER_SOCKET
from tests.gateway.conftest import ALLOWED_ORIGIN, Socket
from tests.trust.conftest import GATEWAY_ENV, Member, Stack, new_member

pytestmark = pytest.mark.e2e

CLOSE_TOO_MANY_SOCKETS = 4029
MAX_SOCKETS_PER_USER = int(GATEWAY_ENV["CONVOAI_MAX_SOCKETS_PER_USER"])
MAX_ANONYMOUS = int(GATEWAY_ENV["CONVOAI_MAX_ANONYMOUS_SOCKETS_PER_ADDRESS"])


async def connect(stack: Stack) -> Socket:
    return Socket(await websockets.connect(f"{stack.gateway.ws_url}/ws", origin=ALLOWED_ORIGIN))


async def member_socket(stack: Stack, member: Member) -> Socket:
    socket = await connect(stack)
    await socket.request({"type": "auth", "token": member.access_token}, "ready")
    return socket


async def close_code(socket: Socket) -> tuple[int | None, list[dict]]:
    frames = []
    try:
        while True:
            frames.append(json.loads(await asyncio.wait_for(socket.connection.recv(), 10)))
    except websockets.ConnectionClosed as closed:
        return (closed.rcvd.code if closed.rcvd else None), frames


async def test_a_nul_in_a_message_is_an_invalid_input_frame(stack: Stack) -> None:
    member = await new_member(stack)
    socket = await member_socket(stack, member)
    started = await socket.request({"type": "start_conversation"}, "conversation.started")
    error = await socket.request(
        {
            "type": "send_message",
            "conversation_id": started["conversation_id"],
            "content": "hello\x00world",
            "client_message_id": "nul",
        },
        "error",
    )
    assert error["code"] == "invalid_input"
    assert (await socket.request({"type": "ping"}, "pong"))["type"] == "pong"
    await socket.close()


async def test_deeply_nested_frames_cost_one_log_line_each(stack: Stack) -> None:
    log_before = len(stack.gateway.logs())
    nested = "[" * 30_000 + "]" * 30_000  # 60 KB, under the frame size limit
    sockets = [await connect(stack) for _ in range(5)]
    for socket in sockets:
        await socket.connection.send(nested)
        frame = await socket.recv()
        assert frame["code"] == "invalid_frame"
    member = await new_member(stack)
    authenticated = await member_socket(stack, member)
    await authenticated.connection.send(
        json.dumps({"type": "ping", "x": json.loads("[" * 40 + "]" * 40)})
    )
    assert (await authenticated.recv())["code"] == "invalid_frame"
    assert (await authenticated.request({"type": "ping"}, "pong"))["type"] == "pong"
    for socket in [*sockets, authenticated]:
        await socket.close()
    new_log = stack.gateway.logs()[log_before:]
    assert "Traceback" not in new_log and "RecursionError" not in new_log
    bad_frame_lines = [line for line in new_log.splitlines() if "bad websocket frame" in line]
    print(f"6 hostile frames → {len(bad_frame_lines)} log lines, 0 tracebacks")
    assert len(bad_frame_lines) == 6


async def test_sockets_per_user_are_capped_with_4029(stack: Stack) -> None:
    member = await new_member(stack)
    sockets = [await member_socket(stack, member) for _ in range(MAX_SOCKETS_PER_USER)]
    refused = 0
    for _ in range(10):
        extra = await connect(stack)
        await extra.send({"type": "auth", "token": member.access_token})
        code, frames = await close_code(extra)
        assert code == CLOSE_TOO_MANY_SOCKETS and frames[-1]["code"] == "too_many_sockets"
        refused += 1
    print(f"{MAX_SOCKETS_PER_USER} sockets open, {refused} more refused with 4029")
    # Another user is not affected; closing one socket frees its place.
    other = await member_socket(stack, await new_member(stack))
    await sockets[0].close()

    async def admitted() -> Socket | None:
        socket = await connect(stack)
        await socket.send({"type": "auth", "token": member.access_token})
        frame = await socket.recv()
        return socket if frame["type"] == "ready" else None

    for _ in range(100):
        if (again := await admitted()) is not None:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("a closed socket's place was not freed")
    for socket in [*sockets[1:], other, again]:
        await socket.close()


async def test_anonymous_sockets_are_capped_per_address(stack: Stack) -> None:
    sockets = []
    for _ in range(MAX_ANONYMOUS):
        socket = await connect(stack)
        await socket.request({"type": "auth", "anonymous": True}, "ready")
        sockets.append(socket)
    extra = await connect(stack)
    await extra.send({"type": "auth", "anonymous": True})
    code, frames = await close_code(extra)
    assert code == CLOSE_TOO_MANY_SOCKETS and frames[-1]["code"] == "too_many_sockets"
    for socket in sockets:
        await socket.close()


async def test_start_conversation_over_the_socket_limit_creates_nothing(stack: Stack) -> None:
    member = await new_member(stack)
    socket = await member_socket(stack, member)
    for n in range(MAX_SUBSCRIPTIONS_PER_SOCKET):
        await socket.request(
            {"type": "start_conversation", "title": f"c{n}"}, "conversation.started"
        )
    error = await socket.request({"type": "start_conversation", "title": "over"}, "error")
    assert "subscriptions per socket" in error["message"]
    async with httpx.AsyncClient(base_url=stack.gateway.url, timeout=10) as client:
        listed = await client.get("/conversations/", headers=member.headers)
    assert listed.json()["total"] == MAX_SUBSCRIPTIONS_PER_SOCKET
    await socket.close()

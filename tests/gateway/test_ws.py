"""The chat WebSocket on a real gateway process: auth, Origin, frames, limits, ownership."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.gateway.conftest import (
    ALLOWED_ORIGIN,
    Socket,
    create_conversation,
    mint_token,
    open_socket,
)
from tests.processes import wait_until

pytestmark = pytest.mark.e2e


async def test_first_frame_auth_gives_ready_and_ping_pong(gateway, new_user):
    socket = await open_socket(gateway, new_user())
    pong = await socket.request({"type": "ping"}, "pong")
    assert pong["ts"] > 0
    await socket.close()


@pytest.mark.parametrize(
    "first_frame",
    [
        {"type": "auth", "token": "garbage"},
        {"type": "ping"},
    ],
)
async def test_unauthenticated_socket_gets_error_then_1008(gateway, first_frame):
    socket = await open_socket(gateway)
    await socket.send(first_frame)
    error = await socket.recv()
    assert error["type"] == "error" and error["code"] in {"unauthorized", "unauthenticated"}
    with pytest.raises(ConnectionClosed) as closed:
        await socket.recv()
    assert closed.value.rcvd.code == 1008


async def test_expired_or_refresh_token_is_refused(gateway, infra, new_user):
    user = new_user()
    for token in (
        mint_token(infra, user.user_id, user.username, ttl_s=-60),
        mint_token(infra, user.user_id, user.username, typ="refresh"),
    ):
        socket = await open_socket(gateway)
        await socket.send({"type": "auth", "token": token})
        assert (await socket.recv())["code"] == "unauthorized"


async def test_silent_socket_is_closed_after_the_auth_timeout(gateway):
    socket = await open_socket(gateway)
    with pytest.raises(ConnectionClosed) as closed:
        await socket.recv(timeout_s=5)
    assert closed.value.rcvd.code == 1008


async def test_query_token_works_and_is_redacted_from_logs(gateway, new_user):
    user = new_user()
    connection = await websockets.connect(f"{gateway.ws_url}/ws?token={user.token}")
    socket = Socket(connection)
    ready = await socket.recv()
    assert ready["type"] == "ready" and ready["user_id"] == user.user_id
    await socket.close()

    # uvicorn logs a refused socket's request line with its query string (accepted ones are
    # not logged, shared/logging.py says why): it must show the redaction.
    with pytest.raises(InvalidStatus):
        await websockets.connect(
            f"{gateway.ws_url}/ws?token={user.token}", origin="http://evil.example"
        )
    wait_until(lambda: "/ws?token=[REDACTED]" in gateway.logs(), 5, message="no access log line")
    assert user.token not in gateway.logs()
    assert user.token.split(".")[2] not in gateway.logs()


async def test_origin_allow_list(gateway, new_user):
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(f"{gateway.ws_url}/ws", origin="http://evil.example")
    assert refused.value.response.status_code == 403
    allowed = await open_socket(gateway, new_user(), origin=ALLOWED_ORIGIN)
    assert (await allowed.request({"type": "ping"}, "pong"))["type"] == "pong"
    await allowed.close()
    # No Origin header at all: a non-browser client, allowed.
    native = await open_socket(gateway, new_user())
    await native.close()


async def test_bad_frames_get_error_frames_and_the_socket_stays_up(gateway, new_user):
    socket = await open_socket(gateway, new_user())
    cases = [
        ("not json at all", "invalid_json"),
        ("[1, 2]", "invalid_frame"),
        (json.dumps({"type": "teleport"}), "unknown_type"),
        (json.dumps({"no_type": 1}), "unknown_type"),
        (json.dumps({"type": "subscribe"}), "invalid_frame"),
        (
            json.dumps({"type": "send_message", "conversation_id": "x", "content": 5}),
            "invalid_frame",
        ),
        (json.dumps({"type": "ping", "pad": "x" * 70_000}), "frame_too_large"),
    ]
    for raw, code in cases:
        await socket.connection.send(raw)
        error = await socket.recv()
        assert (error["type"], error["code"]) == ("error", code), raw[:80]
        assert "x" * 100 not in error["message"]
    assert (await socket.request({"type": "ping"}, "pong"))["type"] == "pong"
    await socket.close()


async def test_one_mib_frame_closes_with_1009_and_others_are_unaffected(gateway, new_user):
    bystander = await open_socket(gateway, new_user())
    socket = await open_socket(gateway, new_user())
    await socket.connection.send(json.dumps({"type": "ping", "pad": "x" * (1024 * 1024)}))
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            frame = await socket.recv()
            assert frame["type"] == "error"
    assert closed.value.rcvd.code in (1008, 1009)
    assert (await bystander.request({"type": "ping"}, "pong"))["type"] == "pong"
    await bystander.close()


async def test_burst_of_10000_frames_is_cut_off_and_gateway_stays_healthy(gateway, new_user):
    bystander = await open_socket(gateway, new_user())
    abuser = await open_socket(gateway, new_user())
    frames = [json.dumps({"type": "ping"})] * 10_000

    async def blast() -> None:
        for raw in frames:
            await abuser.connection.send(raw)

    with pytest.raises(ConnectionClosed):
        await blast()
        while True:
            await abuser.recv()
    assert abuser.connection.close_code == 1008
    assert (await bystander.request({"type": "ping"}, "pong"))["type"] == "pong"
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{gateway.url}/ready")).status_code == 200
    await bystander.close()


async def test_many_bad_frames_close_the_socket_as_abusive(gateway, new_user):
    socket = await open_socket(gateway, new_user())
    for _ in range(50):
        await socket.connection.send("{")
    codes = set()
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            codes.add((await socket.recv())["code"])
    assert codes == {"invalid_json"}
    assert closed.value.rcvd.code == 1008


async def test_another_users_conversation_gets_not_found_frames(gateway, new_user):
    alice, bob = new_user(), new_user()
    cid = (await create_conversation(gateway, alice))["id"]
    socket = await open_socket(gateway, bob)
    for frame in (
        {"type": "subscribe", "conversation_id": cid},
        {
            "type": "send_message",
            "conversation_id": cid,
            "content": "hi",
            "client_message_id": "b1",
        },
        {"type": "end_conversation", "conversation_id": cid},
        {"type": "cancel", "conversation_id": cid},
    ):
        error = await socket.request(frame, "error")
        assert error["code"] == "not_found" and error["conversation_id"] == cid
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        history = await client.get(f"/conversations/{cid}/messages", headers=alice.headers)
        assert history.json()["total"] == 0
        conversation = await client.get(f"/conversations/{cid}", headers=alice.headers)
        assert conversation.json()["status"] == "active"
    await socket.close()


async def test_start_send_and_resend_after_reconnect_creates_one_message(gateway, new_user):
    alice = new_user()
    socket = await open_socket(gateway, alice)
    started = await socket.request(
        {"type": "start_conversation", "title": "over ws", "system_message": "Be kind."},
        "conversation.started",
    )
    cid = started["conversation_id"]
    assert started["conversation"]["system_prompt"] == "Be kind."
    send = {
        "type": "send_message",
        "conversation_id": cid,
        "content": "hello",
        "client_message_id": "k-1",
    }
    ack = await socket.request(send, "ack")
    assert ack["client_message_id"] == "k-1" and ack["duplicate"] is False
    await socket.close()

    again = await open_socket(gateway, alice)
    ack2 = await again.request(send, "ack")
    assert ack2["message_id"] == ack["message_id"] and ack2["duplicate"] is True
    snapshot = await again.request({"type": "subscribe", "conversation_id": cid}, "snapshot")
    assert [m["id"] for m in snapshot["messages"]] == [ack["message_id"]]
    assert snapshot["partial"] is None
    ended = await again.request(
        {"type": "end_conversation", "conversation_id": cid}, "conversation.ended"
    )
    assert ended["status"] == "ended"
    refused = await again.request({**send, "client_message_id": "k-2"}, "error")
    assert refused["code"] == "conflict"
    await again.close()


async def test_concurrent_resends_store_one_message(gateway, new_user):
    alice = new_user()
    cid = (await create_conversation(gateway, alice))["id"]
    sockets = [await open_socket(gateway, alice) for _ in range(4)]
    send = {
        "type": "send_message",
        "conversation_id": cid,
        "content": "race",
        "client_message_id": "r",
    }
    acks = await asyncio.gather(*(s.request(send, "ack") for s in sockets))
    assert len({a["message_id"] for a in acks}) == 1
    assert sorted(a["duplicate"] for a in acks) == [False, True, True, True]
    for s in sockets:
        await s.close()


async def send_acked(socket, cid: str, prefix: str, count: int) -> None:
    """`count` messages `<prefix><i>` (also their client ids), each acknowledged."""
    for i in range(count):
        await socket.request(
            {
                "type": "send_message",
                "conversation_id": cid,
                "content": f"{prefix}{i}",
                "client_message_id": f"{prefix}{i}",
            },
            "ack",
        )


async def test_message_rate_limit_and_length_limit_over_ws(gateway, new_user):
    alice = new_user()
    cid = (await create_conversation(gateway, alice))["id"]
    socket = await open_socket(gateway, alice)
    too_long = await socket.request(
        {
            "type": "send_message",
            "conversation_id": cid,
            "content": "x" * 16_001,
            "client_message_id": "l",
        },
        "error",
    )
    assert too_long["code"] == "invalid_input"
    await send_acked(socket, cid, "m", 20)
    limited = await socket.request(
        {
            "type": "send_message",
            "conversation_id": cid,
            "content": "one more",
            "client_message_id": "m20",
        },
        "error",
    )
    assert limited["code"] == "rate_limited" and limited["client_message_id"] == "m20"
    assert 0 < limited["retry_after"] <= 60
    # A resend of an accepted message is still answered: it costs nothing.
    ack = await socket.request(
        {
            "type": "send_message",
            "conversation_id": cid,
            "content": "m3",
            "client_message_id": "m3",
        },
        "ack",
    )
    assert ack["duplicate"] is True
    # Another user over the limit cannot learn anything of alice's messages by "resending"
    # one of her client ids into her conversation.
    bob = new_user()
    bob_cid = (await create_conversation(gateway, bob))["id"]
    bob_socket = await open_socket(gateway, bob)
    await send_acked(bob_socket, bob_cid, "b", 20)
    probe = await bob_socket.request(
        {
            "type": "send_message",
            "conversation_id": cid,
            "content": "m3",
            "client_message_id": "m3",
        },
        "error",
    )
    assert probe["code"] == "not_found"
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        over_rest = await client.post(
            f"/conversations/{cid}/messages",
            json={"content": "m3", "client_message_id": "m3"},
            headers=bob.headers,
        )
    assert over_rest.status_code == 404, over_rest.text
    await bob_socket.close()
    await socket.close()


async def test_socket_closes_when_its_token_expires_unless_refreshed(gateway, infra, new_user):
    user = new_user()
    expires_at = int(time.time()) + 3
    refreshed = await open_socket(gateway)
    await refreshed.request(
        {"type": "auth", "token": mint_token(infra, user.user_id, user.username, exp=expires_at)},
        "ready",
    )
    await refreshed.request({"type": "auth", "token": user.token}, "reauthenticated")
    other = new_user()
    mismatch = await refreshed.request({"type": "auth", "token": other.token}, "error")
    assert mismatch["code"] == "user_mismatch"

    # Expires one second after the refreshed socket's first token. The gateway's timers fire in
    # time order, so once this socket is told its token expired, the refreshed socket's first
    # expiry is past too: no fixed sleep has to guess how long that takes.
    later = mint_token(infra, user.user_id, user.username, exp=expires_at + 1)
    expiring = await open_socket(gateway)
    await expiring.request({"type": "auth", "token": later}, "ready")
    error, _ = await expiring.recv_until("error", timeout_s=10)
    assert error["code"] == "token_expired"
    with pytest.raises(ConnectionClosed) as closed:
        await expiring.recv()
    assert closed.value.rcvd.code == 1008

    assert (await refreshed.request({"type": "ping"}, "pong"))["type"] == "pong"
    await refreshed.close()

"""Unit tests of the WebSocket protocol's inventory and of frame dispatch by table."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any, get_args

import pytest

from services.gateway import frame_handlers, ws
from services.gateway.errors import (
    BudgetExceeded,
    ChatError,
    Conflict,
    InvalidInput,
    ModelNotAllowed,
    NotFound,
    RateLimited,
)
from services.gateway.frame_handlers import FRAME_HANDLERS
from services.gateway.protocol import (
    BAD_FRAME_CODES,
    CHAT_ERROR_CODES,
    CLIENT_FRAME_TYPES,
    CLIENT_FRAMES,
    CLOSE_CODES,
    ERROR_CODES,
    REPLY_FRAME_TYPES,
    SERVER_FRAME_TYPES,
    BadFrame,
    CancelFrame,
    ClientFrame,
    PingFrame,
    SendMessageFrame,
    parse_client_frame,
)
from services.gateway.settings import GatewaySettings
from services.gateway.watch import ConversationWatch
from shared.stream import ReplyStartedFrame, StreamFrame


def test_every_client_frame_type_parses_to_its_model_and_has_a_handler():
    union = get_args(get_args(ClientFrame)[0])
    assert set(union) == set(CLIENT_FRAMES) == set(FRAME_HANDLERS)
    assert {
        "auth",
        "subscribe",
        "unsubscribe",
        "send_message",
        "start_conversation",
        "end_conversation",
        "cancel",
        "ping",
    } == CLIENT_FRAME_TYPES
    samples: dict[str, dict[str, Any]] = {
        "auth": {"token": "t"},
        "subscribe": {"conversation_id": "c"},
        "unsubscribe": {"conversation_id": "c"},
        "send_message": {"conversation_id": "c", "content": "hi", "client_message_id": "1"},
        "start_conversation": {},
        "end_conversation": {"conversation_id": "c"},
        "cancel": {"conversation_id": "c"},
        "ping": {},
    }
    for frame_type, fields in samples.items():
        frame = parse_client_frame(json.dumps({"type": frame_type, **fields}), 1024)
        assert type(frame) in FRAME_HANDLERS
        assert frame.type == frame_type


def test_bad_frames_get_a_code_of_the_protocol():
    cases = {
        b"\xff": "invalid_json",
        "[]": "invalid_frame",
        "{}": "unknown_type",
        '{"type": "reply.delta"}': "unknown_type",
        '{"type": "send_message", "conversation_id": "c", "content": ""}': "invalid_frame",
        '{"type": "ping"}' + " " * 100: "frame_too_large",
    }
    for raw, code in cases.items():
        with pytest.raises(BadFrame) as bad:
            parse_client_frame(raw, 64)
        assert bad.value.code == code and code in BAD_FRAME_CODES


def test_server_inventory_covers_reply_frames_and_every_refusal_code():
    reply_types = {
        get_args(m.model_fields["type"].annotation)[0] for m in get_args(get_args(StreamFrame)[0])
    }
    # The worker's snapshot answer goes to gateways only, never to a client.
    assert reply_types - {"reply.snapshot"} == REPLY_FRAME_TYPES
    assert REPLY_FRAME_TYPES < SERVER_FRAME_TYPES and "error" in SERVER_FRAME_TYPES
    assert {
        e.code for e in (ChatError, NotFound, Conflict, InvalidInput, ModelNotAllowed)
    } == CHAT_ERROR_CODES
    assert {RateLimited.code, BudgetExceeded.code} < ERROR_CODES
    assert CHAT_ERROR_CODES < ERROR_CODES
    assert {1000, 1008, 1009, 1013, 4001, 4029} == CLOSE_CODES


def _socket() -> tuple[ws.ChatSocket, list[dict[str, Any]]]:
    """A ChatSocket over nothing: dispatch needs no network."""
    gateway = SimpleNamespace(settings=GatewaySettings())
    websocket = SimpleNamespace(client=None, query_params={})
    socket = ws.ChatSocket(websocket, gateway)  # type: ignore[arg-type]
    sent: list[dict[str, Any]] = []
    socket.io.send = sent.append  # type: ignore[method-assign]
    return socket, sent


async def test_dispatch_answers_a_ping_through_the_table():
    socket, sent = _socket()
    await socket._dispatch(PingFrame(type="ping"))
    assert [f["type"] for f in sent] == ["pong"]


async def test_dispatch_turns_refusals_into_error_frames_with_the_frame_context(monkeypatch):
    socket, sent = _socket()

    async def refuse(_socket: Any, frame: Any) -> None:
        raise BudgetExceeded("over the daily token budget; retry in 7 s", 7, "tokens_per_day")

    async def missing(_socket: Any, frame: Any) -> None:
        raise NotFound("Conversation not found")

    monkeypatch.setitem(frame_handlers.FRAME_HANDLERS, SendMessageFrame, refuse)
    monkeypatch.setitem(frame_handlers.FRAME_HANDLERS, CancelFrame, missing)
    await socket._dispatch(
        SendMessageFrame(
            type="send_message", conversation_id="c", content="x", client_message_id="k"
        )
    )
    await socket._dispatch(CancelFrame(type="cancel", conversation_id="c"))
    assert sent == [
        {
            "type": "error",
            "code": "budget_exceeded",
            "message": "over the daily token budget; retry in 7 s",
            "retry_after": 7,
            "limit": "tokens_per_day",
            "client_message_id": "k",
            "conversation_id": "c",
        },
        {
            "type": "error",
            "code": "not_found",
            "message": "Conversation not found",
            "conversation_id": "c",
        },
    ]


@pytest.mark.parametrize(
    "raw",
    [
        # 60 KB of nested arrays: json.loads used to raise RecursionError, dropping the socket
        # with a traceback (issue 11, item 5).
        "[" * 30_000 + "]" * 30_000,
        json.dumps(
            {
                "type": "ping",
                "x": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]],
            }
        ),
    ],
)
def test_deep_nesting_is_a_bad_frame_not_a_crash(raw):
    with pytest.raises(BadFrame) as bad:
        parse_client_frame(raw, 100_000)
    assert bad.value.code == "invalid_frame" and "nested" in bad.value.message


@pytest.mark.parametrize("text", ["a\x00b", "a\ud800b"])
def test_nul_and_lone_surrogates_are_invalid_input(text):
    frame = {
        "type": "send_message",
        "conversation_id": "c",
        "content": text,
        "client_message_id": "k",
    }
    with pytest.raises(BadFrame) as bad:
        parse_client_frame(json.dumps(frame), 1024)
    assert bad.value.code == "invalid_input" and bad.value.code in ERROR_CODES


async def test_a_failed_resync_after_an_outage_still_forwards_frames(monkeypatch):
    """A database error during the resync left the watch buffering for ever (item 17)."""
    socket, sent = _socket()
    forwarded: list[dict[str, Any]] = []
    watch = ConversationWatch("c", forwarded.append, socket._resync_after_recovery)
    socket._watches["c"] = watch

    async def database_down(_watch: Any) -> None:
        raise ConnectionRefusedError("database unavailable")

    monkeypatch.setattr(socket, "_send_snapshot", database_down)
    watch.broker_recovered()
    await asyncio.gather(*socket._tasks)
    watch.deliver(
        ReplyStartedFrame(
            conversation_id="c", message_id="r", reply_to="u", seq=0, attempt=1, model="m"
        )
    )
    assert [f["type"] for f in forwarded] == ["reply.started"]
    assert sent[-1]["code"] == "unavailable" and sent[-1]["conversation_id"] == "c"

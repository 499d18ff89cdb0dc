"""Unit tests of the gateway's pure parts: frame parsing, the per-socket frame filter, the
ordering of a conversation's reply frames."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.chat.models import Message
from services.gateway.protocol import BadFrame, SendMessageFrame, parse_client_frame
from services.gateway.socket_io import FrameRate
from services.gateway.watch import ConversationWatch, Partial
from shared.stream import stream_frame_adapter


def test_parse_client_frame_accepts_a_valid_frame_and_names_each_kind_of_bad_one():
    frame = parse_client_frame(
        json.dumps(
            {
                "type": "send_message",
                "conversation_id": "c",
                "content": "hi",
                "client_message_id": "1",
            }
        ),
        1024,
    )
    assert isinstance(frame, SendMessageFrame) and frame.content == "hi"
    cases = {
        "{": "invalid_json",
        "3": "invalid_frame",
        '{"type": 3}': "unknown_type",
        '{"type": "subscribe", "conversation_id": ""}': "invalid_frame",
        json.dumps({"type": "ping", "pad": "x" * 2000}): "frame_too_large",
    }
    for raw, code in cases.items():
        with pytest.raises(BadFrame) as bad:
            parse_client_frame(raw, 1024)
        assert bad.value.code == code
    with pytest.raises(BadFrame) as bad:
        parse_client_frame(json.dumps({"type": "auth", "token": "secret-" + "t" * 5000}), 64 * 1024)
    assert "secret-" not in bad.value.message


def _frame(kind: str, seq: int, attempt: int = 1, mid: str = "r1", **extra: Any):
    body = {
        "type": kind,
        "conversation_id": "c",
        "message_id": mid,
        "reply_to": "u1",
        "seq": seq,
        "attempt": attempt,
    }
    if kind == "reply.started":
        body["model"] = "m"
    if kind == "reply.delta":
        body.setdefault("delta", extra.pop("delta", str(seq)))
    if kind == "reply.completed":
        body.update(content="", usage={}, model="m")
    body.update(extra)
    return stream_frame_adapter.validate_python(body)


def _watch() -> tuple[ConversationWatch, list[dict[str, Any]]]:
    sent: list[dict[str, Any]] = []
    return ConversationWatch("c", sent.append, lambda _w: None), sent


def test_frames_buffered_during_a_snapshot_are_replayed_after_its_seq_only():
    watch, sent = _watch()
    watch.start_buffering()
    for seq in (3, 4, 5):
        watch.deliver(_frame("reply.delta", seq))
    assert sent == []
    watch.go_live([], [Partial("r1", "u1", seq=4, attempt=1, content="abcd")])
    assert [f["seq"] for f in sent] == [5]
    watch.deliver(_frame("reply.delta", 5))
    watch.deliver(_frame("reply.delta", 6))
    watch.deliver(_frame("reply.completed", 7))
    watch.deliver(_frame("reply.completed", 7))
    assert [(f["type"], f["seq"]) for f in sent] == [
        ("reply.delta", 5),
        ("reply.delta", 6),
        ("reply.completed", 7),
    ]


def test_a_new_attempt_restarts_the_reply_and_stale_attempt_frames_are_dropped():
    watch, sent = _watch()
    watch.go_live([], [])
    watch.deliver(_frame("reply.started", 0))
    watch.deliver(_frame("reply.delta", 1))
    watch.deliver(_frame("reply.started", 0))  # duplicate start of the same attempt
    watch.deliver(_frame("reply.started", 0, attempt=2))
    watch.deliver(_frame("reply.delta", 2, attempt=1))  # the old worker, too late
    watch.deliver(_frame("reply.delta", 1, attempt=2))
    assert [(f["type"], f["attempt"], f["seq"]) for f in sent] == [
        ("reply.started", 1, 0),
        ("reply.delta", 1, 1),
        ("reply.started", 2, 0),
        ("reply.delta", 2, 1),
    ]


def test_a_terminal_frame_of_a_reply_already_stored_as_finished_is_not_repeated():
    watch, sent = _watch()
    watch.start_buffering()
    watch.deliver(_frame("reply.completed", 3))
    stored = Message(
        id="r1", role="assistant", status="complete", attempt=1, seq=3, conversation_id="c"
    )
    watch.go_live([stored], [])
    assert sent == []


def test_frame_rate_allows_a_burst_then_the_sustained_rate():
    now = [0.0]
    rate = FrameRate(per_second=10, burst=3, clock=lambda: now[0])
    assert [rate.allow() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.1
    assert rate.allow() and not rate.allow()

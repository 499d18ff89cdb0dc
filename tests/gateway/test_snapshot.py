"""Unit tests of the snapshot hand-over: stored partials merged with the workers' memory, and a
watch collecting the workers' answers while frames wait for the snapshot."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from services.chat.models import Message
from services.gateway.fanout import worker_acted
from services.gateway.snapshot import (
    holders,
    in_stream_order,
    merge_worker_snapshots,
    snapshot_frame,
    stored_partials,
)
from services.gateway.watch import ConversationWatch, Partial
from shared.stream import ReplySnapshotFrame, ReplyStartedFrame

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _message(mid: str, role: str, status: str, **fields: Any) -> Message:
    return Message(
        id=mid,
        conversation_id="c",
        role=role,
        status=status,
        content=fields.pop("content", ""),
        seq=fields.pop("seq", 0),
        attempt=fields.pop("attempt", 1),
        created_at=NOW,
        updated_at=NOW,
        **fields,
    )


def _snap(mid: str, seq: int, attempt: int = 1, request: str = "q") -> ReplySnapshotFrame:
    return ReplySnapshotFrame(
        conversation_id="c",
        message_id=mid,
        reply_to="u-" + mid,
        seq=seq,
        attempt=attempt,
        content="x" * seq,
        request_id=request,
    )


def test_the_workers_memory_wins_unless_a_newer_attempt_is_stored():
    messages = [
        _message("u1", "user", "complete"),
        _message("r1", "assistant", "streaming", reply_to="u1", seq=2, content="ab"),
        _message("r2", "assistant", "streaming", reply_to="u2", seq=1, attempt=3, content="z"),
        _message("r3", "assistant", "complete", reply_to="u3", seq=9),
    ]
    stored = stored_partials(messages)
    assert list(stored) == ["r1", "r2"]
    merged = merge_worker_snapshots(
        stored, {"r1": _snap("r1", 5), "r2": _snap("r2", 8, attempt=2), "r9": _snap("r9", 1)}
    )
    assert merged["r1"].seq == 5  # ahead of the stored partial
    assert (merged["r2"].attempt, merged["r2"].seq) == (3, 1)  # stale attempt ignored
    ordered = in_stream_order(list(stored), merged)
    assert [p.message_id for p in ordered] == ["r1", "r2", "r9"]
    frame = snapshot_frame("c", [messages[0], messages[3]], ordered)
    assert [m["id"] for m in frame["messages"]] == ["u1", "r3"]
    assert frame["partial"]["message_id"] == "r9" and len(frame["partials"]) == 3


async def test_a_watch_waits_for_snapshots_and_starts_of_awaited_replies_then_replays():
    sent: list[dict[str, Any]] = []
    watch = ConversationWatch("c", sent.append, lambda _w: None)
    watch.start_buffering()
    watch.expect_snapshots("q", {"r1"}, {"u-r2"})
    watch.deliver(_snap("r1", 2, request="other"))  # another subscription's answer
    watch.deliver(_snap("r1", 2))
    watch.deliver(_snap("r1", 1))  # an older answer does not replace a newer one
    started = ReplyStartedFrame(
        conversation_id="c", message_id="r2", reply_to="u-r2", seq=0, attempt=1, model="m"
    )
    watch.deliver(started)  # the awaited reply started: its frames are all in the buffer
    answers = await watch.wait_snapshots(timeout_s=5)
    assert {m: s.seq for m, s in answers.items()} == {"r1": 2}
    assert sent == []
    watch.go_live([], [Partial("r1", "u-r1", 2, 1, "xx")])
    assert [(f["type"], f["message_id"]) for f in sent] == [("reply.started", "r2")]


async def test_waiting_for_snapshots_gives_up_after_the_timeout():
    watch = ConversationWatch("c", lambda _f: None, lambda _w: None)
    watch.start_buffering()
    watch.expect_snapshots("q", {"r1"}, set())
    assert await watch.wait_snapshots(timeout_s=0) == {}


async def test_replies_no_worker_holds_are_not_waited_for():
    watch = ConversationWatch("c", lambda _f: None, lambda _w: None)
    watch.start_buffering()
    watch.expect_snapshots("q", {"r1", "r2"}, set())
    watch.deliver(_snap("r1", 3))
    watch.expect_no_snapshots({"r1", "r2"})  # their holder went away after all
    answers = await watch.wait_snapshots(timeout_s=5)
    assert {m: s.seq for m, s in answers.items()} == {"r1": 3}  # what did arrive counts


def test_the_holder_of_each_streaming_reply_is_read_from_its_row():
    messages = [
        _message("r1", "assistant", "streaming", worker_id="w1"),
        _message("r2", "assistant", "streaming", worker_id="w1"),
        _message("r3", "assistant", "streaming", worker_id="w2"),
        _message("r4", "assistant", "streaming"),  # stored before rows named their worker
        _message("r5", "assistant", "complete", worker_id="w3"),
    ]
    assert holders(messages) == {"w1": {"r1", "r2"}, "w2": {"r3"}}


def test_a_workers_answer_says_whether_it_acted():
    assert worker_acted(b'{"type":"control.answer","acted":false}') is False
    assert worker_acted(b'{"type":"control.answer","acted":true}') is True
    # Workers that answer only when they act send no `acted`.
    assert worker_acted(b'{"type":"control.answer"}') is True

"""Unit tests of the worker's frame clock and control commands (no broker, no database)."""

from __future__ import annotations

import asyncio
from typing import Any

from services.chat_worker.control import EarlyCancels, apply_command, cancel_reply
from services.chat_worker.frame_clock import FrameClock, flush_pending, frame_interval_s
from services.chat_worker.reply import ActiveReply, CoalescingPolicy
from services.chat_worker.settings import ChatWorkerSettings
from shared.stream import CancelCommand, ResyncCommand


class Frames:
    def __init__(self) -> None:
        self.published: list[Any] = []

    def publish(self, frame: Any) -> None:
        self.published.append(frame)


def _reply(conversation: str, message: str, reply_to: str) -> ActiveReply:
    return ActiveReply(
        conversation_id=conversation,
        message_id=message,
        reply_to=reply_to,
        model="m",
        attempt=1,
        policy=CoalescingPolicy(60.0, 1000),
    )


def test_the_interval_stretches_so_frames_per_second_stay_under_the_cap():
    assert frame_interval_s(0.05, streaming=10, max_frames_per_second=1000) == 0.05
    assert frame_interval_s(0.05, streaming=500, max_frames_per_second=1000) == 0.5


def test_flush_pending_sends_what_was_coalesced_once():
    frames = Frames()
    reply = _reply("c", "r", "u")
    reply.started_frame()
    flush_pending(frames, reply)  # nothing pending: nothing sent
    reply.add_delta("a")
    reply.add_delta("b")
    flush_pending(frames, reply)
    flush_pending(frames, reply)
    assert [(f.seq, f.delta) for f in frames.published] == [(1, "ab")]


async def test_the_clock_is_parked_while_no_reply_streams_and_runs_once_one_starts():
    """An idle worker's clock does not tick; a reply that starts wakes it, and its coalesced
    text then goes out on the clock's tick."""
    frames = Frames()
    policy = CoalescingPolicy(0.01, 1000)
    active: dict[str, ActiveReply] = {}
    clock = FrameClock(
        ChatWorkerSettings(frame_interval_ms=10, persist_interval_s=3600),
        policy,
        active,
        frames,  # type: ignore[arg-type]
        outbox=None,  # type: ignore[arg-type]  (partials are not stored within the test)
        db_slots=asyncio.Semaphore(1),
    )
    ticking = asyncio.create_task(clock.tick_forever())
    await asyncio.sleep(0)  # the clock's first step: it finds no reply in flight and parks
    try:
        reply = ActiveReply(
            conversation_id="c", message_id="r", reply_to="u", model="m", attempt=1, policy=policy
        )
        reply.started_frame()
        reply.add_delta("first")
        reply.flush()  # the first frame is out; the next text waits for a tick
        reply.add_delta(" more")
        active["r"] = reply  # behind the clock's back: a parked clock does not see it
        await asyncio.sleep(0.2)  # twenty intervals
        assert frames.published == []
        clock.reply_started()
        async with asyncio.timeout(5):
            while not frames.published:
                await asyncio.sleep(0.005)
        assert [(f.seq, f.delta) for f in frames.published] == [(2, " more")]
    finally:
        ticking.cancel()


async def test_cancel_hits_only_the_named_reply_once_and_resync_answers_per_reply():
    frames = Frames()
    one, two, elsewhere = _reply("c", "r1", "u1"), _reply("c", "r2", "u2"), _reply("d", "r3", "u3")
    for reply in (one, two, elsewhere):
        reply.task = asyncio.create_task(asyncio.sleep(60))
    active = [one, two, elsewhere]
    try:
        apply_command(
            CancelCommand(conversation_id="c", message_id="u2", requested_by="x"), active, frames
        )  # type: ignore[arg-type]
        apply_command(
            CancelCommand(conversation_id="c", message_id="r2", requested_by="y"), active, frames
        )  # type: ignore[arg-type]
        await asyncio.sleep(0)
        assert two.cancel_requested_by == "x" and two.task is not None and two.task.cancelled()
        assert one.cancel_requested_by is None and not one.task.done()  # type: ignore[union-attr]
        apply_command(ResyncCommand(conversation_id="c", request_id="q"), active, frames)  # type: ignore[arg-type]
        assert sorted(f.message_id for f in frames.published) == ["r1", "r2"]
        assert all(f.request_id == "q" for f in frames.published)
    finally:
        for reply in active:
            assert reply.task is not None
            reply.task.cancel()


async def test_a_cancel_during_the_claim_is_kept_and_applied_to_the_new_reply():
    """Between the worker's claim and the reply becoming active, a cancel was dropped (item 19)."""
    frames = Frames()
    early = EarlyCancels()
    cancel = CancelCommand(conversation_id="c", message_id="u1", requested_by="x")
    # No claim under way in the conversation: nothing to keep.
    apply_command(cancel, [], frames, early)  # type: ignore[arg-type]
    early.claim_started("c")
    apply_command(cancel, [], frames, early)  # type: ignore[arg-type]
    reply = _reply("c", "r1", "u1")
    other = _reply("c", "r2", "u2")
    assert early.take(other) is None
    kept = early.take(reply)
    assert kept is not None
    reply.task = asyncio.create_task(asyncio.sleep(60))
    assert cancel_reply(reply, kept.requested_by)
    await asyncio.sleep(0)
    assert reply.cancel_requested_by == "x" and reply.task.cancelled()
    early.claim_ended("c")
    assert early.take(reply) is None

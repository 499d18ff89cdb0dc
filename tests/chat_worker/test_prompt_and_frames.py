"""The pure parts of a reply: the prompt the model sees and how deltas become frames."""

from __future__ import annotations

import time

from services.chat_worker.prompt import Turn, build_prompt, estimate_tokens
from services.chat_worker.reply import ActiveReply, CoalescingPolicy
from shared.stream import Usage


def test_prompt_keeps_the_newest_turns_that_fit_the_budget():
    history = [
        Turn("user" if i % 2 == 0 else "assistant", f"turn {i} " + "x" * 400) for i in range(20)
    ]
    history.append(Turn("user", "the question"))
    messages = build_prompt("be nice", history, budget_tokens=600)
    assert messages[0] == {"role": "system", "content": "be nice"}
    assert messages[-1] == {"role": "user", "content": "the question"}
    kept = messages[1:]
    assert 1 < len(kept) < len(history)
    assert [m["content"] for m in kept] == [t.content for t in history[-len(kept) :]]
    assert sum(estimate_tokens(m["content"]) for m in messages) <= 600
    # Never starts with an answer whose question was cut off.
    assert kept[0]["role"] == "user"


def test_the_question_is_sent_even_when_it_alone_exceeds_the_budget():
    messages = build_prompt("sys", [Turn("user", "old"), Turn("user", "y" * 10_000)], 200)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[-1]["content"] == "y" * 10_000


def _reply(interval_s: float = 60.0, max_chars: int = 1000) -> ActiveReply:
    return ActiveReply(
        conversation_id="c" * 12,
        message_id="m" * 10,
        reply_to="u" * 10,
        model="mock",
        attempt=1,
        policy=CoalescingPolicy(interval_s, max_chars),
    )


def test_first_delta_goes_out_at_once_and_later_ones_are_coalesced():
    reply = _reply()
    assert reply.started_frame().seq == 0
    # The first text is flushed by the caller on the loop's next turn, with what came along.
    assert reply.add_delta("Hel") is None
    assert reply.needs_first_frame()
    assert reply.add_delta("lo") is None
    assert not reply.needs_first_frame()
    first = reply.flush()
    assert first is not None and (first.seq, first.delta) == (1, "Hello")
    assert reply.add_delta(" wor") is None
    assert reply.add_delta("ld") is None
    assert reply.sent_text == "Hello" and reply.full_text == "Hello world"
    flushed = reply.flush()
    assert flushed is not None and (flushed.seq, flushed.delta) == (2, " world")
    assert reply.flush() is None


def test_a_frame_leaves_early_when_enough_text_is_pending():
    reply = _reply(max_chars=10)
    reply.started_frame()
    reply.add_delta("a")
    reply.flush()  # the first frame
    assert reply.add_delta("12345") is None
    frame = reply.add_delta("67890")
    assert frame is not None and frame.delta == "1234567890"


def test_pending_text_becomes_due_after_the_interval():
    reply = _reply(interval_s=0.05)
    reply.started_frame()
    reply.add_delta("a")
    reply.flush()  # the first frame
    reply.add_delta("b")
    now = time.monotonic()
    assert not reply.due(now)
    assert reply.due(now + 0.06)


def test_terminal_frame_follows_the_last_delta_and_carries_the_whole_text():
    reply = _reply()
    reply.started_frame()
    reply.add_delta("one")
    reply.flush()
    reply.add_delta(" two")
    reply.flush()
    snapshot = reply.snapshot_frame("r")
    assert (snapshot.seq, snapshot.content) == (2, "one two")
    cancelled = reply.cancelled_frame()
    assert (cancelled.seq, cancelled.content) == (3, "one two")


def test_text_pending_when_the_stream_ends_leaves_with_the_terminal_frame():
    reply = _reply()
    reply.started_frame()
    reply.add_delta("one")
    first = reply.flush()
    assert first is not None and first.seq == 1
    reply.add_delta(" two")
    reply.add_delta(" three")
    reply.end_stream()
    # Neither the clock nor a scheduled first flush sends the tail as a delta of its own.
    assert reply.flush() is None
    assert reply.snapshot_frame("r").content == "one"
    completed = reply.completed_frame(Usage(), "stop")
    assert (completed.seq, completed.content) == (2, "one two three")


def test_a_reply_that_came_in_one_read_is_one_terminal_frame():
    reply = _reply()
    reply.started_frame()
    reply.add_delta("all")
    assert reply.needs_first_frame()
    reply.add_delta(" at once")
    reply.end_stream()
    assert reply.flush() is None  # the first flush, scheduled for the loop's next turn
    completed = reply.completed_frame(Usage(), "stop")
    assert (completed.seq, completed.content) == (1, "all at once")


def test_a_cancelled_reply_carries_its_pending_text():
    reply = _reply()
    reply.started_frame()
    reply.add_delta("so far")
    cancelled = reply.cancelled_frame()
    assert (cancelled.seq, cancelled.content) == (1, "so far")


def test_restart_is_a_new_attempt_from_seq_zero():
    reply = _reply()
    reply.started_frame()
    reply.add_delta("partial")
    started = reply.restart(2)
    assert (started.seq, started.attempt) == (0, 2)
    assert reply.full_text == ""

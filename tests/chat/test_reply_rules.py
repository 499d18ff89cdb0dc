"""Unit tests of the reply-state rules the gateway and the chat workers share."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from services.chat.models import MessageRole, MessageStatus
from services.chat.replies import (
    AWAITING_REPLY_WINDOW,
    PROMPT_STATUSES,
    ReplyPosition,
    awaiting_reply,
    is_finished,
    is_finished_reply,
    is_own_first_claim,
    is_streaming_reply,
    may_take_over,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


@dataclass
class Row:
    id: str
    role: str
    status: str = MessageStatus.COMPLETE
    reply_to: str | None = None
    created_at: datetime = NOW


def test_finished_states_are_final_and_streaming_is_not():
    assert all(is_finished(s) for s in ("complete", "failed", "cancelled"))
    assert not is_finished(MessageStatus.STREAMING)
    assert set(PROMPT_STATUSES) == {MessageStatus.COMPLETE, MessageStatus.CANCELLED}
    streaming = Row("r", MessageRole.ASSISTANT, MessageStatus.STREAMING, "u")
    done = Row("r", MessageRole.ASSISTANT, MessageStatus.FAILED, "u")
    question = Row("u", MessageRole.USER, MessageStatus.COMPLETE)
    assert is_streaming_reply(streaming) and not is_finished_reply(streaming)
    assert is_finished_reply(done) and not is_streaming_reply(done)
    # A user message is "complete" when stored, but it is no reply.
    assert not is_finished_reply(question)


def test_a_newer_attempt_outranks_any_seq_of_an_older_one():
    assert ReplyPosition(2, 0) > ReplyPosition(1, 99)
    assert ReplyPosition(1, 5) > ReplyPosition(1, 4)
    assert max([ReplyPosition(1, 7), ReplyPosition(2, 1), ReplyPosition(1, 9)]) == (2, 1)


def test_only_a_streaming_reply_is_taken_over_at_once_when_redelivered_else_when_stale():
    fresh, stale = NOW - timedelta(seconds=1), NOW - timedelta(seconds=120)
    rule = {"now": NOW, "stale_after_s": 60}
    assert may_take_over(MessageStatus.STREAMING, fresh, redelivered=True, **rule)
    assert not may_take_over(MessageStatus.STREAMING, fresh, redelivered=False, **rule)
    assert may_take_over(MessageStatus.STREAMING, stale, redelivered=False, **rule)
    for finished in (MessageStatus.COMPLETE, MessageStatus.FAILED, MessageStatus.CANCELLED):
        assert not may_take_over(finished, stale, redelivered=True, **rule)


def test_a_claim_recognises_only_its_own_first_streaming_row():
    assert is_own_first_claim("r1", "r1", 1, MessageStatus.STREAMING)
    assert not is_own_first_claim("r1", "r2", 1, MessageStatus.STREAMING)
    assert not is_own_first_claim("r1", "r1", 2, MessageStatus.STREAMING)
    assert not is_own_first_claim("r1", "r1", 1, MessageStatus.COMPLETE)


def test_recent_unanswered_user_messages_are_awaiting_a_reply():
    old = NOW - AWAITING_REPLY_WINDOW - timedelta(seconds=1)
    messages = [
        Row("u-old", MessageRole.USER, created_at=old),
        Row("u-answered", MessageRole.USER),
        Row("r", MessageRole.ASSISTANT, MessageStatus.STREAMING, reply_to="u-answered"),
        Row("u-new", MessageRole.USER),
    ]
    assert awaiting_reply(messages, NOW) == {"u-new"}
    assert awaiting_reply(iter(messages), NOW) == {"u-new"}

"""A chat worker answers `message.sent` with exactly one streamed, stored reply."""

from __future__ import annotations

import asyncio

import pytest

from services.chat.models import MessageStatus
from services.chat_worker.prompt import Turn as PromptTurn
from services.chat_worker.prompt import build_prompt
from services.chat_worker.settings import ChatWorkerSettings
from services.mock_llm.service import count_prompt_tokens
from shared.stream import (
    CancelCommand,
    ReplyCancelledFrame,
    ReplyCompletedFrame,
    ReplyDeltaFrame,
    ReplyFailedFrame,
    ReplySnapshotFrame,
    ResyncCommand,
)
from tests.chat_worker.conftest import (
    REPLY_TOKENS,
    assert_clean_stream,
    unique,
    worker_metrics,
)
from tests.processes import wait_until

pytestmark = pytest.mark.e2e


async def test_reply_is_the_models_reply_streamed_in_order_and_stored(probe, worker, mock_settings):
    turn = await probe.send(unique("hello"))
    terminal = await turn.until_terminal()
    expected = turn.expected_text(mock_settings)
    assert isinstance(terminal, ReplyCompletedFrame)
    assert assert_clean_stream(turn) == expected == terminal.content
    assert terminal.usage.completion_tokens == REPLY_TOKENS
    assert terminal.finish_reason == "stop"
    [reply] = await probe.replies(turn)
    assert reply.status == MessageStatus.COMPLETE
    assert reply.content == expected
    assert reply.seq == terminal.seq
    assert reply.completion_tokens == REPLY_TOKENS
    assert reply.ttft_ms is not None and reply.duration_ms is not None


async def test_many_requests_at_once_each_get_exactly_one_reply(probe, worker, mock_settings):
    turns = await asyncio.gather(*(probe.send(unique(f"burst {i}")) for i in range(60)))
    terminals = await asyncio.gather(*(t.until_terminal() for t in turns))
    for turn, terminal in zip(turns, terminals, strict=True):
        assert isinstance(terminal, ReplyCompletedFrame)
        assert assert_clean_stream(turn) == turn.expected_text(mock_settings)
        assert len(await probe.replies(turn)) == 1


async def test_model_errors_are_retried_until_it_answers(probe, faults, mock_settings):
    content = unique("flaky")
    faults(status=500, times=3, match=content)
    turn = await probe.send(content)
    terminal = await turn.until_terminal()
    assert isinstance(terminal, ReplyCompletedFrame)
    assert terminal.content == turn.expected_text(mock_settings)


async def test_a_model_that_keeps_failing_gives_a_failed_reply_with_a_code(probe, faults):
    content = unique("broken")
    faults(status=500, times=-1, match=content)
    turn = await probe.send(content)
    terminal = await turn.until_terminal()
    assert isinstance(terminal, ReplyFailedFrame)
    assert terminal.error.code == "model_unavailable"
    [reply] = await probe.replies(turn)
    assert (reply.status, reply.error_code) == (MessageStatus.FAILED, "model_unavailable")


async def test_a_refused_request_fails_at_once_without_retries(probe, faults):
    content = unique("refused")
    faults(status=400, times=-1, match=content)
    turn = await probe.send(content)
    terminal = await turn.until_terminal()
    assert isinstance(terminal, ReplyFailedFrame)
    assert terminal.error.code == "model_bad_request"


async def test_a_cut_stream_is_regenerated_never_completed_truncated(probe, faults, mock_settings):
    content = unique("cut once")
    faults(cut_after=5, times=1, match=content)
    turn = await probe.send(content)
    terminal = await turn.until_terminal()
    expected = turn.expected_text(mock_settings)
    assert isinstance(terminal, ReplyCompletedFrame)
    assert terminal.content == expected
    # The first attempt's deltas reached clients, so the reply restarted as attempt 2.
    assert terminal.attempt == 2
    assert assert_clean_stream(turn, attempt=2) == expected
    [reply] = await probe.replies(turn)
    assert (reply.status, reply.attempt, reply.content) == (MessageStatus.COMPLETE, 2, expected)


async def test_a_stream_that_is_always_cut_fails(probe, faults):
    content = unique("cut always")
    faults(cut_after=3, times=-1, match=content)
    turn = await probe.send(content)
    terminal = await turn.until_terminal()
    assert isinstance(terminal, ReplyFailedFrame)
    assert terminal.error.code == "model_stream_interrupted"
    assert not any(isinstance(f, ReplyCompletedFrame) for f in turn.received)
    [reply] = await probe.replies(turn)
    assert reply.status == MessageStatus.FAILED


async def test_a_stalled_model_times_out_and_is_retried(probe, faults, mock_settings):
    content = unique("stall")
    faults(stall_after=0, stall_s=30, times=1, match=content)
    turn = await probe.send(content)
    terminal = await turn.until_terminal()
    assert isinstance(terminal, ReplyCompletedFrame)
    assert terminal.content == turn.expected_text(mock_settings)


async def test_cancel_stops_the_reply_and_keeps_the_partial(probe, worker, faults, mock_settings):
    content = unique("cancel me")
    faults(tokens_per_second=20, match=content)
    turn = await probe.send(content)
    deltas = 0
    while deltas < 3:
        if isinstance(await turn.next_frame(), ReplyDeltaFrame):
            deltas += 1
    command = CancelCommand(conversation_id=turn.conversation_id, requested_by=turn.owner_id)
    await probe.command(turn.conversation_id, command.model_dump_json())
    terminal = await turn.until_terminal()
    assert isinstance(terminal, ReplyCancelledFrame)
    expected = turn.expected_text(mock_settings)
    assert terminal.content and expected.startswith(terminal.content)
    assert len(terminal.content) < len(expected)
    assert assert_clean_stream(turn) == terminal.content
    [reply] = await probe.replies(turn)
    assert (reply.status, reply.content) == (MessageStatus.CANCELLED, terminal.content)
    # The worker keeps serving.
    after = await probe.send(unique("still there?"))
    assert isinstance(await after.until_terminal(), ReplyCompletedFrame)


async def test_resync_answers_with_the_in_memory_partial(probe, faults, mock_settings):
    content = unique("resync")
    faults(tokens_per_second=20, match=content)
    turn = await probe.send(content)
    while not isinstance(await turn.next_frame(), ReplyDeltaFrame):
        pass
    await probe.command(
        turn.conversation_id,
        ResyncCommand(conversation_id=turn.conversation_id, request_id="r-1").model_dump_json(),
    )
    terminal = await turn.until_terminal()
    assert isinstance(terminal, ReplyCompletedFrame)
    [snapshot] = [f for f in turn.received if isinstance(f, ReplySnapshotFrame)]
    assert snapshot.request_id == "r-1"
    before = [f for f in turn.received if isinstance(f, ReplyDeltaFrame) and f.seq <= snapshot.seq]
    assert snapshot.content == "".join(f.delta for f in before)
    assert terminal.content.startswith(snapshot.content)


async def test_partial_reply_is_stored_while_streaming(probe, faults):
    content = unique("slow partial")
    faults(tokens_per_second=15, match=content)
    turn = await probe.send(content)

    async def stored_partial():
        replies = await probe.replies(turn)
        return replies and replies[0].status == MessageStatus.STREAMING and replies[0].seq > 0

    for _ in range(100):
        if await stored_partial():
            break
        await asyncio.sleep(0.05)
    [reply] = await probe.replies(turn)
    assert reply.status == MessageStatus.STREAMING and reply.seq > 0
    received = "".join(f.delta for f in turn.received if isinstance(f, ReplyDeltaFrame))
    assert reply.content  # what clients were sent up to the stored seq
    terminal = await turn.until_terminal()
    assert terminal.content.startswith(reply.content)
    assert received.startswith(reply.content) or reply.content.startswith(received)


async def test_a_request_delivered_again_gets_no_second_reply(probe, worker, mock_settings):
    turn = await probe.send(unique("once only"))
    terminal = await turn.until_terminal()
    before = worker_metrics(worker)["duplicates_skipped"]
    await probe.announce(turn)
    await probe.announce(turn)
    await asyncio.to_thread(
        wait_until,
        lambda: worker_metrics(worker)["duplicates_skipped"] >= before + 2,
        10,
    )
    assert turn.frames.empty()
    [reply] = await probe.replies(turn)
    assert reply.content == terminal.content


async def test_the_prompt_carries_the_conversations_history(probe, worker, mock_settings):
    """Turn two's prompt is the system prompt, turn one's question and answer, then the new
    question: mock_llm counts the prompt's words into `usage.prompt_tokens`."""
    first = await probe.send(unique("first question"))
    first_done = await first.until_terminal()
    assert isinstance(first_done, ReplyCompletedFrame)
    second = await probe.send(unique("second question"), first.conversation_id)
    second_done = await second.until_terminal()
    assert isinstance(second_done, ReplyCompletedFrame)
    settings = ChatWorkerSettings()
    history = [
        PromptTurn("user", first.content),
        PromptTurn("assistant", first_done.content),
        PromptTurn("user", second.content),
    ]
    prompt = build_prompt(settings.default_system_prompt, history, settings.context_budget_tokens)
    assert [m["role"] for m in prompt] == ["system", "user", "assistant", "user"]
    assert second_done.usage.prompt_tokens == count_prompt_tokens(prompt)
    first_prompt = [prompt[0], {"role": "user", "content": first.content}]
    assert first_done.usage.prompt_tokens == count_prompt_tokens(first_prompt)

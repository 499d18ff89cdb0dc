"""A worker that dies or is stopped mid-reply loses nothing and doubles nothing.

Runs last in this package: it kills and stops workers, including the shared one.
"""

from __future__ import annotations

import asyncio
import signal

import pytest

from services.chat.models import MessageStatus
from shared.stream import ReplyCompletedFrame, ReplyDeltaFrame, ReplyStartedFrame
from tests.chat_worker.conftest import assert_clean_stream, unique, worker_metrics

pytestmark = pytest.mark.e2e


async def _wait_deltas(turn, count: int) -> None:
    seen = 0
    while seen < count:
        if isinstance(await turn.next_frame(), ReplyDeltaFrame):
            seen += 1


def _holder(workers):
    """The (live) worker process streaming the one reply in flight."""
    alive = [w for w in workers if w.proc is not None and w.proc.poll() is None]
    metrics = {w.instance_id: worker_metrics(w) for w in alive}
    holders = [w for w in alive if metrics[w.instance_id]["streaming"] > 0]
    assert len(holders) == 1, metrics
    return holders[0]


async def test_sigterm_lets_the_reply_in_flight_finish(
    probe, worker, workers, start_worker, faults, mock_settings
):
    start_worker()
    content = unique("graceful")
    faults(tokens_per_second=15, match=content)
    turn = await probe.send(content)
    await _wait_deltas(turn, 2)
    holder = _holder(workers)
    stopping = asyncio.create_task(asyncio.to_thread(holder.stop, signal.SIGTERM))
    terminal = await turn.until_terminal(30)
    assert await stopping == 0
    assert isinstance(terminal, ReplyCompletedFrame)
    expected = turn.expected_text(mock_settings)
    assert terminal.content == expected
    assert assert_clean_stream(turn, terminal.attempt) == expected
    [reply] = await probe.replies(turn)
    assert (reply.status, reply.content) == (MessageStatus.COMPLETE, expected)


async def test_kill_9_mid_stream_another_worker_regenerates_exactly_one_reply(
    probe, worker, workers, start_worker, faults, mock_settings
):
    start_worker()
    content = unique("killed")
    # Only the first attempt is slow, so the regenerated one finishes quickly.
    faults(tokens_per_second=15, match=content, times=1)
    started_events = await probe.listen_for_events("reply.started")
    turn = await probe.send(content)
    await _wait_deltas(turn, 3)
    holder = _holder(workers)
    [streaming] = await probe.replies(turn)
    assert streaming.worker_id == holder.instance_id  # the row names who to ask about it
    holder.kill()
    terminal = await turn.until_terminal(30)
    expected = turn.expected_text(mock_settings)
    assert isinstance(terminal, ReplyCompletedFrame)
    assert terminal.content == expected
    assert terminal.attempt == 2
    restarted = [f for f in turn.received if isinstance(f, ReplyStartedFrame)]
    assert [f.attempt for f in restarted] == [1, 2]
    assert assert_clean_stream(turn, attempt=2) == expected
    [reply] = await probe.replies(turn)
    assert (reply.status, reply.attempt, reply.content) == (MessageStatus.COMPLETE, 2, expected)
    survivors = {w.instance_id for w in workers if w is not holder}
    assert reply.worker_id in survivors  # the take-over wrote its own worker
    # The take-over is announced as an event; the first attempt sent none (its frame told the
    # clients, and reply.completed carries what analytics keeps).
    announced = await asyncio.wait_for(started_events.get(), 10)
    assert (announced["message_id"], announced["attempt"]) == (reply.id, 2)
    assert started_events.empty()

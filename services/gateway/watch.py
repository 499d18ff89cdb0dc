"""One socket's view of one conversation: the frames of its replies, each forwarded once and in
order, with the snapshot hand-over (frames arriving while a snapshot is built wait for it).

No I/O here: frames come in through `deliver` (from the fan-out) and go out through `send`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from services.chat.models import Message
from services.chat.replies import ReplyPosition, is_finished_reply
from shared.stream import (
    ReplyCancelledFrame,
    ReplyCompletedFrame,
    ReplyDeltaFrame,
    ReplyFailedFrame,
    ReplyRetryingFrame,
    ReplySnapshotFrame,
    ReplyStartedFrame,
    StreamFrame,
)

REMEMBERED_REPLIES = 64
"""Replies a watch keeps the position of; older ones cannot still be streaming to it."""


@dataclass
class _ReplyState:
    attempt: int
    seq: int
    done: bool = False


@dataclass(frozen=True)
class Partial:
    """A streaming reply as far as it is known: stored, or from its worker's memory."""

    message_id: str
    reply_to: str | None
    seq: int
    attempt: int
    content: str

    @property
    def position(self) -> ReplyPosition:
        return ReplyPosition(self.attempt, self.seq)

    def as_frame(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "reply_to": self.reply_to,
            "seq": self.seq,
            "attempt": self.attempt,
            "content": self.content,
        }


class ConversationWatch:
    """One socket's view of one conversation: buffers frames while a snapshot is being built,
    then forwards each reply's frames once, in order, after the snapshot's `seq`."""

    def __init__(
        self,
        conversation_id: str,
        send: Callable[[dict[str, Any] | str], None],
        on_recovered: Callable[[ConversationWatch], None],
    ) -> None:
        self.conversation_id = conversation_id
        self._send = send
        self._on_recovered = on_recovered
        self._buffer: list[tuple[StreamFrame, str | None]] | None = None
        self._replies: OrderedDict[str, _ReplyState] = OrderedDict()
        self._snapshot_request: str | None = None
        self._snapshots: dict[str, ReplySnapshotFrame] = {}
        self._snapshots_expected: set[str] = set()
        self._awaiting_replies: set[str] = set()
        self._snapshots_complete = asyncio.Event()

    def start_buffering(self) -> None:
        self._buffer = []

    def deliver(self, frame: StreamFrame, wire: str | None = None) -> None:
        if isinstance(frame, ReplySnapshotFrame):
            self._collect_snapshot(frame)
        elif self._buffer is not None:
            self._buffer.append((frame, wire))
            if isinstance(frame, ReplyStartedFrame) and frame.reply_to in self._awaiting_replies:
                # Its frames from seq 0 on are all in the buffer: no snapshot needed for it.
                self._awaiting_replies.discard(frame.reply_to)
                self._check_snapshots_complete()
        else:
            self._forward(frame, wire)

    def broker_recovered(self) -> None:
        self._on_recovered(self)

    def expect_snapshots(
        self, request_id: str, message_ids: set[str], awaiting_replies: set[str]
    ) -> None:
        """Wait for snapshots of the streaming replies `message_ids`, and for a snapshot or a
        `reply.started` of a reply to each of the user messages `awaiting_replies`."""
        self._snapshot_request = request_id
        self._snapshots = {}
        self._snapshots_expected = set(message_ids)
        self._awaiting_replies = set(awaiting_replies)
        self._snapshots_complete.clear()
        self._check_snapshots_complete()

    def expect_no_snapshots(self, message_ids: set[str]) -> None:
        """No worker holds the replies `message_ids` (their holder is gone, or says it has
        none of them): what is stored of them is all there is."""
        self._snapshots_expected -= message_ids
        self._check_snapshots_complete()

    async def wait_snapshots(self, timeout_s: float) -> dict[str, ReplySnapshotFrame]:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._snapshots_complete.wait(), timeout_s)
        self._snapshot_request = None
        self._awaiting_replies = set()
        return dict(self._snapshots)

    def _collect_snapshot(self, frame: ReplySnapshotFrame) -> None:
        if frame.request_id != self._snapshot_request:
            return
        known = self._snapshots.get(frame.message_id)
        if known is None or ReplyPosition(frame.attempt, frame.seq) > ReplyPosition(
            known.attempt, known.seq
        ):
            self._snapshots[frame.message_id] = frame
        self._awaiting_replies.discard(frame.reply_to)
        self._check_snapshots_complete()

    def _check_snapshots_complete(self) -> None:
        if self._snapshots_expected <= self._snapshots.keys() and not self._awaiting_replies:
            self._snapshots_complete.set()

    def go_live(self, stored: Sequence[Message], partials: Sequence[Partial]) -> None:
        """The snapshot has been sent: replay what arrived meanwhile, then forward live."""
        self._replies.clear()
        for message in stored:
            if is_finished_reply(message):
                self._remember(message.id, _ReplyState(message.attempt, message.seq, done=True))
        for partial in partials:
            self._remember(partial.message_id, _ReplyState(partial.attempt, partial.seq))
        buffered, self._buffer = self._buffer or [], None
        for frame, wire in buffered:
            self._forward(frame, wire)

    def _remember(self, message_id: str, state: _ReplyState) -> None:
        self._replies[message_id] = state
        self._replies.move_to_end(message_id)
        while len(self._replies) > REMEMBERED_REPLIES:
            self._replies.popitem(last=False)

    def _forward(self, frame: StreamFrame, wire: str | None) -> None:
        state = self._replies.get(frame.message_id)
        if isinstance(frame, ReplyStartedFrame):
            if state is not None and frame.attempt <= state.attempt:
                return
            self._remember(frame.message_id, _ReplyState(frame.attempt, frame.seq))
        elif isinstance(frame, ReplyDeltaFrame):
            if state is not None:
                if state.done or frame.attempt < state.attempt:
                    return
                if frame.attempt == state.attempt and frame.seq <= state.seq:
                    return
            self._remember(frame.message_id, _ReplyState(frame.attempt, frame.seq))
        elif isinstance(frame, ReplyRetryingFrame):
            # A notice, not a step of the reply: forwarded unless the reply moved past it.
            if state is not None and (state.done or frame.attempt < state.attempt):
                return
        elif isinstance(frame, ReplyCompletedFrame | ReplyFailedFrame | ReplyCancelledFrame):
            if state is not None and (state.done or frame.attempt < state.attempt):
                return
            self._remember(frame.message_id, _ReplyState(frame.attempt, frame.seq, done=True))
        self._send(wire if wire is not None else frame.model_dump(mode="json"))

"""One reply being streamed: its text so far, its `seq`, and how deltas become frames."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from services.chat_worker.usage_estimate import (
    estimate_completion_tokens,
    estimate_prompt_tokens,
)
from shared.events import SourceRef
from shared.stream import (
    ReplyCancelledFrame,
    ReplyCompletedFrame,
    ReplyDeltaFrame,
    ReplyError,
    ReplyFailedFrame,
    ReplyRetryingFrame,
    ReplySnapshotFrame,
    ReplyStartedFrame,
    Usage,
)


@dataclass
class CoalescingPolicy:
    """The first delta leaves at once (with whatever arrived alongside it); later ones at most
    every `interval_s`, or at `max_chars`.

    One policy is shared by every reply of a worker, so the worker can stretch `interval_s`
    when it streams many replies at once (see `ChatReplies.tick_forever`).
    """

    interval_s: float
    max_chars: int


@dataclass
class ActiveReply:
    conversation_id: str
    message_id: str
    reply_to: str
    model: str
    attempt: int
    policy: CoalescingPolicy
    seq: int = 0
    """Seq of the last frame handed out (reply.started is 0)."""
    persisted_seq: int = -1
    started_at: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    last_frame_at: float = 0.0
    cancel_requested_by: str | None = None
    sources: list[SourceRef] = field(default_factory=list)
    """Knowledge-file chunks this attempt's prompt included."""
    prompt: list[dict[str, str]] | None = None
    """The messages sent to the model, once built: its usage is estimated from them only when
    the model reports none."""
    task: asyncio.Task[object] | None = None
    _sent: list[str] = field(default_factory=list)
    _pending: list[str] = field(default_factory=list)
    _pending_chars: int = 0
    _first_frame_scheduled: bool = False
    _stream_ended: bool = False

    @property
    def sent_text(self) -> str:
        """The text of every frame handed out so far (what `seq` covers)."""
        if len(self._sent) > 1:
            self._sent[:] = ["".join(self._sent)]
        return self._sent[0] if self._sent else ""

    @property
    def full_text(self) -> str:
        """Everything generated, including deltas still waiting to be coalesced."""
        return self.sent_text + "".join(self._pending)

    @property
    def has_pending(self) -> bool:
        return bool(self._pending)

    def restart(self, attempt: int) -> ReplyStartedFrame:
        """Start over (a new attempt): clients drop what they had of this reply."""
        self.attempt = attempt
        self.seq = 0
        self.persisted_seq = -1
        self.first_token_at = None
        self._sent.clear()
        self._pending.clear()
        self._pending_chars = 0
        self._first_frame_scheduled = False
        self._stream_ended = False
        return self.started_frame()

    def started_frame(self) -> ReplyStartedFrame:
        self.last_frame_at = time.monotonic()
        return ReplyStartedFrame(**self._ids(), model=self.model)

    def add_delta(self, text: str) -> ReplyDeltaFrame | None:
        """Take one model delta; a frame when it should go out now, else it waits."""
        now = time.monotonic()
        if self.first_token_at is None:
            self.first_token_at = now
        self._pending.append(text)
        self._pending_chars += len(text)
        if self.seq == 0:
            # The first text leaves on the event loop's next turn (`needs_first_frame`), not
            # here: deltas that came in the same read from a fast model join it in one frame.
            return None
        if (
            self._pending_chars >= self.policy.max_chars
            or now - self.last_frame_at >= self.policy.interval_s
        ):
            return self.flush(now)
        return None

    def needs_first_frame(self) -> bool:
        """True once, when the first text is pending: the caller schedules its flush."""
        if self.seq != 0 or not self._pending or self._first_frame_scheduled:
            return False
        self._first_frame_scheduled = True
        return True

    def due(self, now: float) -> bool:
        return bool(self._pending) and now - self.last_frame_at >= self.policy.interval_s

    def end_stream(self) -> None:
        """The model has said everything: text still pending leaves with the terminal frame
        (whose `content` is the whole reply), not as a delta of its own. A fast model's whole
        reply, or a slow one's tail, then costs one frame fewer on the broker and the socket; it
        waits for the final store (one statement) instead of the clock's next tick (a tail) or
        the loop's next turn (a reply that came in one read)."""
        self._stream_ended = True

    def flush(self, now: float | None = None) -> ReplyDeltaFrame | None:
        if not self._pending or self._stream_ended:
            return None
        delta = self._take_pending()
        self.seq += 1
        self.last_frame_at = time.monotonic() if now is None else now
        return ReplyDeltaFrame(**self._ids(), delta=delta)

    def estimated_usage(self, chunks: int) -> Usage:
        """Usage estimated from the prompt and the text generated (`usage_estimate.py`)."""
        prompt = estimate_prompt_tokens(self.prompt) if self.prompt is not None else 0
        completion = estimate_completion_tokens(self.full_text, chunks)
        return Usage(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        )

    def _take_pending(self) -> str:
        """Move the pending text to the sent text (a delta's, or a terminal frame's `content`,
        which is the whole text); the text moved."""
        text = "".join(self._pending)
        self._pending.clear()
        self._pending_chars = 0
        if text:
            self._sent.append(text)
        return text

    def completed_frame(
        self, usage: Usage, finish_reason: str | None, usage_estimated: bool = False
    ) -> ReplyCompletedFrame:
        self._take_pending()
        self.seq += 1
        return ReplyCompletedFrame(
            **self._ids(),
            content=self.sent_text,
            usage=usage,
            usage_estimated=usage_estimated,
            finish_reason=finish_reason,
            model=self.model,
            sources=self.sources,
        )

    def failed_frame(self, code: str, message: str) -> ReplyFailedFrame:
        self._take_pending()
        self.seq += 1
        return ReplyFailedFrame(
            **self._ids(), error=ReplyError(code=code, message=message), content=self.sent_text
        )

    def cancelled_frame(self) -> ReplyCancelledFrame:
        self._take_pending()
        self.seq += 1
        return ReplyCancelledFrame(**self._ids(), content=self.sent_text)

    def retrying_frame(
        self, retry: int, max_retries: int, error: ReplyError, retry_in_s: float
    ) -> ReplyRetryingFrame:
        return ReplyRetryingFrame(
            **self._ids(),
            retry=retry,
            max_retries=max_retries,
            error=error,
            retry_in_s=round(retry_in_s, 2),
        )

    def snapshot_frame(self, request_id: str) -> ReplySnapshotFrame:
        return ReplySnapshotFrame(**self._ids(), content=self.sent_text, request_id=request_id)

    def elapsed_ms(self) -> float:
        return (time.monotonic() - self.started_at) * 1000

    def ttft_ms(self) -> float:
        if self.first_token_at is None:
            return 0.0
        return (self.first_token_at - self.started_at) * 1000

    def _ids(self) -> dict[str, object]:
        return {
            "conversation_id": self.conversation_id,
            "message_id": self.message_id,
            "reply_to": self.reply_to,
            "seq": self.seq,
            "attempt": self.attempt,
        }

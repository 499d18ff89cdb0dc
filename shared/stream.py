"""Live reply frames (worker → gateways, on `<ns>.stream`) and control commands (gateway →
the worker holding a reply, on `<ns>.control`). Both use routing key `conv.<conversation_id>`.

Frames are transient; what must survive is in the `chat.messages` table. A reply is numbered
by `seq`: `reply.started` is seq 0, each `reply.delta` adds one, and the terminal frame
(`reply.completed` / `reply.failed` / `reply.cancelled`) carries the next seq, one past the
last delta's. When a worker dies
mid-reply, another one regenerates it with `attempt + 1` and sends `reply.started` again: a
client drops what it had of that reply and starts over from seq 0.

The seam on (re)subscribe: a gateway binds its queue to `conv.<id>` first, then reads the stored
messages and, when a reply is still streaming, publishes `resync`. The worker holding that reply
answers with a `reply.snapshot` frame (its in-memory partial and current seq); the gateway sends
the client a snapshot built from it and forwards only frames with a higher seq.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from shared.events import SourceRef


class _Frame(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    conversation_id: str
    message_id: str
    """The assistant reply's id."""
    reply_to: str
    """The user message it answers."""
    seq: int
    attempt: int = 1


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ReplyError(BaseModel):
    code: str
    message: str


class ReplyStartedFrame(_Frame):
    type: Literal["reply.started"] = "reply.started"
    model: str


class ReplyDeltaFrame(_Frame):
    type: Literal["reply.delta"] = "reply.delta"
    delta: str


class ReplyCompletedFrame(_Frame):
    type: Literal["reply.completed"] = "reply.completed"
    content: str
    usage: Usage
    usage_estimated: bool = False
    """The model reported no usage: `usage` was estimated from the text."""
    finish_reason: str | None = None
    model: str
    sources: list[SourceRef] = Field(default_factory=list)
    """Knowledge-file chunks the prompt included."""


class ReplyFailedFrame(_Frame):
    type: Literal["reply.failed"] = "reply.failed"
    error: ReplyError
    content: str = ""
    """What was generated before the failure (kept for the record, not shown as complete)."""


class ReplyCancelledFrame(_Frame):
    type: Literal["reply.cancelled"] = "reply.cancelled"
    content: str
    """The partial reply as stored."""


class ReplyRetryingFrame(_Frame):
    """The model call failed and is tried again after `retry_in_s`; the reply is not lost.

    Not a step of the reply: `seq` is that of the last frame before it, and a client keeps what
    it has (a retry that must start over sends `reply.started` with the next attempt).
    """

    type: Literal["reply.retrying"] = "reply.retrying"
    retry: int
    """1 for the first retry of this reply."""
    max_retries: int
    error: ReplyError
    retry_in_s: float


class ReplySnapshotFrame(_Frame):
    """The worker's in-memory state of a streaming reply, in answer to `resync`."""

    type: Literal["reply.snapshot"] = "reply.snapshot"
    content: str
    request_id: str


StreamFrame = Annotated[
    ReplyStartedFrame
    | ReplyDeltaFrame
    | ReplyCompletedFrame
    | ReplyFailedFrame
    | ReplyCancelledFrame
    | ReplyRetryingFrame
    | ReplySnapshotFrame,
    Field(discriminator="type"),
]
stream_frame_adapter: TypeAdapter[StreamFrame] = TypeAdapter(StreamFrame)


class CancelCommand(BaseModel):
    """Stop generating the streaming reply in this conversation (optionally one reply)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    type: Literal["cancel"] = "cancel"
    conversation_id: str
    message_id: str | None = None
    requested_by: str


class ResyncCommand(BaseModel):
    """Ask the worker holding this conversation's reply for a `reply.snapshot` frame."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    type: Literal["resync"] = "resync"
    conversation_id: str
    request_id: str


ControlCommand = Annotated[CancelCommand | ResyncCommand, Field(discriminator="type")]
control_command_adapter: TypeAdapter[ControlCommand] = TypeAdapter(ControlCommand)

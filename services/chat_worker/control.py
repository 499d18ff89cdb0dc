"""Control commands from the gateways (`cancel`, `resync`) applied to this worker's replies."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from services.chat_worker.broadcast import FrameChannel
from services.chat_worker.reply import ActiveReply
from shared.stream import CancelCommand, ControlCommand, ResyncCommand

log = logging.getLogger(__name__)


def cancel(command: CancelCommand, replies: Sequence[ActiveReply], frames: FrameChannel) -> None:
    """Stop generating the named reply (or every reply of the conversation); the request's
    handler stores it as cancelled."""
    for reply in replies:
        if command.message_id not in (None, reply.message_id, reply.reply_to):
            continue
        if reply.cancel_requested_by is None and reply.task is not None:
            reply.cancel_requested_by = command.requested_by
            reply.task.cancel()
            log.info("reply cancel requested", extra={"reply": reply.message_id})


def resync(command: ResyncCommand, replies: Sequence[ActiveReply], frames: FrameChannel) -> None:
    """Answer a subscribing gateway with each streaming reply's text so far."""
    for reply in replies:
        frames.publish(reply.snapshot_frame(command.request_id))


COMMAND_HANDLERS: dict[type, Callable[[Any, Sequence[ActiveReply], FrameChannel], None]] = {
    CancelCommand: cancel,
    ResyncCommand: resync,
}
"""Command type → what it does to this worker's replies in its conversation."""


def apply_command(
    command: ControlCommand, active: Sequence[ActiveReply], frames: FrameChannel
) -> None:
    replies = [r for r in active if r.conversation_id == command.conversation_id]
    COMMAND_HANDLERS[type(command)](command, replies, frames)

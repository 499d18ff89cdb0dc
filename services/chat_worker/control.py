"""Control commands from the gateways (`cancel`, `resync`) applied to this worker's replies."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from services.chat_worker.broadcast import FrameChannel
from services.chat_worker.reply import ActiveReply
from shared.stream import CancelCommand, ControlCommand, ResyncCommand

log = logging.getLogger(__name__)


def apply_command(
    command: ControlCommand, active: Iterable[ActiveReply], frames: FrameChannel
) -> None:
    replies = [r for r in active if r.conversation_id == command.conversation_id]
    if isinstance(command, CancelCommand):
        for reply in replies:
            if command.message_id not in (None, reply.message_id, reply.reply_to):
                continue
            if reply.cancel_requested_by is None and reply.task is not None:
                reply.cancel_requested_by = command.requested_by
                reply.task.cancel()
                log.info("reply cancel requested", extra={"reply": reply.message_id})
    elif isinstance(command, ResyncCommand):
        for reply in replies:
            frames.publish(reply.snapshot_frame(command.request_id))

"""Control commands from the gateways (`cancel`, `resync`) applied to this worker's replies."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from services.chat_worker.broadcast import FrameChannel
from services.chat_worker.reply import ActiveReply
from shared.stream import CancelCommand, ControlCommand, ResyncCommand

log = logging.getLogger(__name__)


class EarlyCancels:
    """Cancels that arrive while this worker is still claiming a request of their conversation
    (before its reply is active): kept until the claim ends, then applied to the new reply.
    Without them a cancel in that window was dropped silently (issue 11, item 19)."""

    def __init__(self) -> None:
        self._claiming: dict[str, int] = {}
        self._pending: dict[str, list[CancelCommand]] = {}

    def claim_started(self, conversation_id: str) -> None:
        self._claiming[conversation_id] = self._claiming.get(conversation_id, 0) + 1

    def claim_ended(self, conversation_id: str) -> None:
        left = self._claiming.get(conversation_id, 0) - 1
        if left > 0:
            self._claiming[conversation_id] = left
        else:
            self._claiming.pop(conversation_id, None)
            self._pending.pop(conversation_id, None)

    def keep(self, command: CancelCommand) -> bool:
        """Keep `command` when a claim in its conversation is under way."""
        if command.conversation_id not in self._claiming:
            return False
        self._pending.setdefault(command.conversation_id, []).append(command)
        return True

    def take(self, reply: ActiveReply) -> CancelCommand | None:
        """The kept cancel that names `reply` (or any reply of its conversation)."""
        for command in self._pending.get(reply.conversation_id, []):
            if command.message_id in (None, reply.message_id, reply.reply_to):
                return command
        return None


def cancel_reply(reply: ActiveReply, requested_by: str) -> bool:
    if reply.cancel_requested_by is not None or reply.task is None:
        return False
    reply.cancel_requested_by = requested_by
    reply.task.cancel()
    log.info("reply cancel requested", extra={"reply": reply.message_id})
    return True


def apply_command(
    command: ControlCommand,
    active: Iterable[ActiveReply],
    frames: FrameChannel,
    early: EarlyCancels | None = None,
) -> bool:
    """Act on `command`; True when this worker holds (or is claiming) a reply it concerns."""
    replies = [r for r in active if r.conversation_id == command.conversation_id]
    if isinstance(command, CancelCommand):
        matched = [r for r in replies if command.message_id in (None, r.message_id, r.reply_to)]
        for reply in matched:
            cancel_reply(reply, command.requested_by)
        return bool(matched) or (early is not None and early.keep(command))
    elif isinstance(command, ResyncCommand):
        for reply in replies:
            frames.publish(reply.snapshot_frame(command.request_id))
        return bool(replies)
    return False

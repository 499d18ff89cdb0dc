"""Control commands from the gateways (`cancel`, `resync`) applied to this worker's replies.

Every worker hears every command (its control queue is bound to `conv.*`), so each handler says
whether this worker acted on it: the gateway that asked waits for such an answer (`reply_to`)
to tell "a reply was there to cancel" from "nothing is being generated". A resync sent to the
holder a reply row names is answered either way (broadcast.py), so a subscribe never waits for a
reply its holder no longer has.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

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
    """Stop generating `reply`; the request's handler stores it as cancelled."""
    if reply.cancel_requested_by is not None or reply.task is None:
        return False
    reply.cancel_requested_by = requested_by
    reply.task.cancel()
    log.info("reply cancel requested", extra={"reply": reply.message_id})
    return True


def cancel(
    command: CancelCommand,
    replies: Sequence[ActiveReply],
    frames: FrameChannel,
    early: EarlyCancels | None,
) -> bool:
    """Stop the named reply (or every reply of the conversation), or keep the command for a
    reply this worker is still claiming."""
    matched = [r for r in replies if command.message_id in (None, r.message_id, r.reply_to)]
    for reply in matched:
        cancel_reply(reply, command.requested_by)
    return bool(matched) or (early is not None and early.keep(command))


def resync(
    command: ResyncCommand,
    replies: Sequence[ActiveReply],
    frames: FrameChannel,
    early: EarlyCancels | None,
) -> bool:
    """Answer a subscribing gateway with each streaming reply's text so far."""
    for reply in replies:
        frames.publish(reply.snapshot_frame(command.request_id))
    return bool(replies)


COMMAND_HANDLERS: dict[
    type, Callable[[Any, Sequence[ActiveReply], FrameChannel, EarlyCancels | None], bool]
] = {
    CancelCommand: cancel,
    ResyncCommand: resync,
}
"""Command type → what it does to this worker's replies in its conversation; True when it
acted."""


def apply_command(
    command: ControlCommand,
    active: Sequence[ActiveReply],
    frames: FrameChannel,
    early: EarlyCancels | None = None,
) -> bool:
    """Act on `command`; True when this worker holds (or is claiming) a reply it concerns."""
    replies = [r for r in active if r.conversation_id == command.conversation_id]
    return COMMAND_HANDLERS[type(command)](command, replies, frames, early)

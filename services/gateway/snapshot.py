"""The snapshot hand-over of a subscription (the resubscribe seam): what is stored, completed
by the workers' memory of replies still streaming, sent as one `snapshot` frame, after which the
watch forwards only what comes later.

A streaming reply's row names the worker holding it (`worker_id`): that worker alone is asked,
and it always answers, so a reply left `streaming` by a worker that died (the broker returns
the command: the worker's control queue is gone) costs no wait. Every worker binds `conv.*`, so
a command broadcast to the conversation always looks routed; the broadcast remains only for
what no row names a holder of.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from services.chat.models import Message
from services.chat.replies import awaiting_reply, is_streaming_reply
from services.gateway.context import Gateway
from services.gateway.fanout import StreamUnavailable
from services.gateway.schemas import MessageOut
from services.gateway.watch import ConversationWatch, Partial
from shared.stream import ReplySnapshotFrame, ResyncCommand

SNAPSHOT_MESSAGES = 200
"""Newest stored messages a snapshot carries; older history is paged over REST."""


def stored_partials(messages: Sequence[Message]) -> dict[str, Partial]:
    """The streaming replies among `messages`, as far as their rows have them."""
    return {
        m.id: Partial(m.id, m.reply_to, m.seq, m.attempt, m.content)
        for m in messages
        if is_streaming_reply(m)
    }


def holders(messages: Sequence[Message]) -> dict[str, set[str]]:
    """Worker id → the streaming replies among `messages` whose rows name it as their holder."""
    held: dict[str, set[str]] = {}
    for m in messages:
        if is_streaming_reply(m) and m.worker_id is not None:
            held.setdefault(m.worker_id, set()).add(m.id)
    return held


def merge_worker_snapshots(
    partials: Mapping[str, Partial], answers: Mapping[str, ReplySnapshotFrame]
) -> dict[str, Partial]:
    """Stored partials completed by the workers' answers to a resync."""
    merged = dict(partials)
    for message_id, snap in answers.items():
        known = merged.get(message_id)
        # The worker's memory is ahead of the stored partial unless a newer attempt has
        # already been stored.
        if known is None or (snap.attempt, snap.seq) >= known.position:
            merged[message_id] = Partial(
                snap.message_id, snap.reply_to, snap.seq, snap.attempt, snap.content
            )
    return merged


def in_stream_order(streaming_ids: Sequence[str], partials: Mapping[str, Partial]) -> list[Partial]:
    """Stored streaming replies in their stored order, then those only a worker knew of."""
    known = [partials[i] for i in streaming_ids if i in partials]
    return known + [p for i, p in partials.items() if i not in streaming_ids]


def snapshot_frame(
    conversation_id: str, stored: Sequence[Message], ordered: Sequence[Partial]
) -> dict[str, Any]:
    return {
        "type": "snapshot",
        "conversation_id": conversation_id,
        "messages": [MessageOut.model_validate(m).model_dump(mode="json") for m in stored],
        "partial": ordered[-1].as_frame() if ordered else None,
        "partials": [p.as_frame() for p in ordered],
    }


async def send_snapshot(
    gateway: Gateway,
    messages: Sequence[Message],
    watch: ConversationWatch,
    send: Callable[[dict[str, Any]], None],
) -> None:
    """Send `watch`'s conversation as `messages` (its newest stored ones) and the workers'
    memory of its streaming replies, then let the watch go live."""
    conversation_id = watch.conversation_id
    partials = stored_partials(messages)
    streaming_ids = list(partials)
    # A reply whose row the worker has not written yet streams only in its memory.
    awaiting = awaiting_reply(messages, datetime.now(UTC))
    if partials or awaiting:
        request_id = secrets.token_urlsafe(12)
        command = ResyncCommand(conversation_id=conversation_id, request_id=request_id)
        timeout_s = gateway.settings.resync_timeout_s
        watch.expect_snapshots(request_id, set(partials), awaiting)
        held = holders(messages)
        asks = [
            asyncio.create_task(_ask_holder(gateway, watch, worker_id, ids, command))
            for worker_id, ids in held.items()
        ]
        unheld = set(partials).difference(*held.values())
        routed = False
        if unheld or awaiting:
            try:
                routed = await gateway.fanout.publish_control(command)
            except StreamUnavailable:
                routed = False
        # Unrouted: no worker is running, so none will answer; whatever starts from now on
        # arrives live on the binding made before the read.
        try:
            answers = await watch.wait_snapshots(timeout_s if routed or asks else 0)
        finally:
            for ask in asks:
                ask.cancel()
            await asyncio.gather(*asks, return_exceptions=True)
        partials = merge_worker_snapshots(partials, answers)
    stored = [m for m in messages if m.id not in partials]
    ordered = in_stream_order(streaming_ids, partials)
    send(snapshot_frame(conversation_id, stored, ordered))
    watch.go_live(stored, ordered)


async def _ask_holder(
    gateway: Gateway,
    watch: ConversationWatch,
    worker_id: str,
    reply_ids: set[str],
    command: ResyncCommand,
) -> None:
    """Ask `worker_id` alone for its snapshots of `reply_ids`; stop waiting for them when it
    is gone or holds none of them (a worker that does not answer in time is waited out)."""
    try:
        holds = await gateway.fanout.ask_worker(
            worker_id, command, gateway.settings.resync_timeout_s
        )
    except StreamUnavailable:
        holds = False
    if holds is False:
        watch.expect_no_snapshots(reply_ids)

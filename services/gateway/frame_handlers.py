"""What the gateway does with each client frame of an authenticated socket, and the table that
dispatches a parsed frame to its handler. A new frame type: its model in `protocol.py`, its
handler here, one row in `FRAME_HANDLERS`."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from services.gateway.errors import ChatError
from services.gateway.protocol import (
    AuthFrame,
    CancelFrame,
    EndConversationFrame,
    PingFrame,
    SendMessageFrame,
    StartConversationFrame,
    SubscribeFrame,
    UnsubscribeFrame,
)
from services.gateway.schemas import ConversationCreate, ConversationOut
from shared.stream import CancelCommand

if TYPE_CHECKING:
    from services.gateway.ws import ChatSocket


async def on_ping(socket: ChatSocket, frame: PingFrame) -> None:
    socket.io.send({"type": "pong", "ts": time.time()})


async def on_auth(socket: ChatSocket, frame: AuthFrame) -> None:
    await socket.auth.reauthenticate(frame)


async def on_subscribe(socket: ChatSocket, frame: SubscribeFrame) -> None:
    await socket.subscribe(frame.conversation_id)


async def on_unsubscribe(socket: ChatSocket, frame: UnsubscribeFrame) -> None:
    await socket.unsubscribe(frame.conversation_id)
    socket.io.send({"type": "unsubscribed", "conversation_id": frame.conversation_id})


async def on_send_message(socket: ChatSocket, frame: SendMessageFrame) -> None:
    chat = socket.gateway.chat
    # One unit of work. Already watched (the hot path): the message is one statement on its
    # own; otherwise the ownership check and the message share one transaction.
    async with socket.gateway.unit_of_work() as session:
        if not socket.watches(frame.conversation_id):
            # Ownership first: a socket never watches another user's conversation. Then watch
            # before storing, so the reply's first frame cannot slip past it.
            await chat.get_conversation(session, socket.user_id, frame.conversation_id)
            await socket.watch_live(frame.conversation_id)
        accepted = await chat.send_message(
            session,
            socket.user_id,
            frame.conversation_id,
            frame.content,
            frame.client_message_id,
            rate_key=socket.rate_key(),
        )
    socket.io.send(
        {
            "type": "ack",
            "client_message_id": frame.client_message_id,
            "message_id": accepted.message_id,
            "conversation_id": frame.conversation_id,
            "duplicate": accepted.duplicate,
        }
    )


async def on_start_conversation(socket: ChatSocket, frame: StartConversationFrame) -> None:
    if socket.auth.anonymous and socket.ephemeral:
        raise ChatError("an anonymous socket has one conversation")
    # Before creating it: a conversation the socket cannot watch must not be made at all.
    socket.check_room_for_watch()
    async with socket.gateway.unit_of_work() as session:
        conversation = await socket.gateway.chat.create_conversation(
            session,
            socket.user_id,
            ConversationCreate(
                title=frame.title,
                system_prompt=frame.system_message,
                assistant_id=frame.assistant_id,
                model=frame.model,
            ),
            socket.roles,
        )
    if socket.auth.anonymous:
        socket.ephemeral.append(conversation.id)
    await socket.watch_live(conversation.id)
    socket.io.send(
        {
            "type": "conversation.started",
            "conversation_id": conversation.id,
            "conversation": ConversationOut.model_validate(conversation).model_dump(mode="json"),
        }
    )


async def on_end_conversation(socket: ChatSocket, frame: EndConversationFrame) -> None:
    async with socket.gateway.unit_of_work() as session:
        conversation = await socket.gateway.chat.end_conversation(
            session, socket.user_id, frame.conversation_id
        )
    socket.io.send(
        {
            "type": "conversation.ended",
            "conversation_id": conversation.id,
            "status": conversation.status,
        }
    )


async def on_cancel(socket: ChatSocket, frame: CancelFrame) -> None:
    async with socket.gateway.unit_of_work() as session:
        await socket.gateway.chat.get_conversation(session, socket.user_id, frame.conversation_id)
    acted = await socket.gateway.fanout.request_control(
        CancelCommand(
            conversation_id=frame.conversation_id,
            message_id=frame.message_id,
            requested_by=socket.user_id,
        ),
        socket.gateway.settings.control_answer_timeout_s,
    )
    if not acted:
        socket.io.error(
            "nothing_to_cancel",
            "no reply is being generated in this conversation",
            conversation_id=frame.conversation_id,
        )


FrameHandler = Callable[["ChatSocket", Any], Awaitable[None]]

FRAME_HANDLERS: dict[type, FrameHandler] = {
    PingFrame: on_ping,
    AuthFrame: on_auth,
    SubscribeFrame: on_subscribe,
    UnsubscribeFrame: on_unsubscribe,
    SendMessageFrame: on_send_message,
    StartConversationFrame: on_start_conversation,
    EndConversationFrame: on_end_conversation,
    CancelFrame: on_cancel,
}
"""Client frame type → what an authenticated socket does with it."""

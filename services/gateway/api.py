"""REST routes of the gateway: conversations, messages, assistants (README, quick start)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response, status
from fastapi.responses import JSONResponse

from services.chat.models import ConversationStatus, Message, MessageRole
from services.chat.replies import is_finished
from services.gateway.context import Gateway, gateway_dependency
from services.gateway.errors import (
    BudgetExceeded,
    ChatError,
    Conflict,
    InvalidInput,
    LimitReached,
    NotFound,
    RateLimited,
)
from services.gateway.fanout import StreamUnavailable
from services.gateway.schemas import (
    MAX_SEARCH_LENGTH,
    AssistantCreate,
    AssistantOut,
    AssistantUpdate,
    ConversationCreate,
    ConversationOut,
    ConversationStats,
    ConversationUpdate,
    MessageAccepted,
    MessageCreate,
    MessageOut,
)
from services.gateway.service import AcceptedMessage
from shared.input_guards import unprocessable
from shared.pagination import Limit, Page, Skip
from shared.security import CurrentPrincipal
from shared.stream import (
    ReplyCancelledFrame,
    ReplyCompletedFrame,
    ReplyFailedFrame,
    StreamFrame,
)

DEFAULT_PAGE_SIZE = 20
REPLY_POLL_INTERVAL_S = 0.5
"""`?wait=true` re-reads the database this often in case the live frame was missed."""

GatewayDep = Annotated[Gateway, Depends(gateway_dependency)]

router = APIRouter()

_STATUS_OF_ERROR: dict[type[ChatError], int] = {
    NotFound: status.HTTP_404_NOT_FOUND,
    Conflict: status.HTTP_409_CONFLICT,
    InvalidInput: status.HTTP_422_UNPROCESSABLE_CONTENT,
    RateLimited: status.HTTP_429_TOO_MANY_REQUESTS,
    BudgetExceeded: status.HTTP_429_TOO_MANY_REQUESTS,
}


def install_error_handlers(app: FastAPI) -> None:
    async def chat_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ChatError)
        if isinstance(exc, InvalidInput):
            return unprocessable(exc.message)
        headers = {}
        body: dict[str, object] = {"detail": exc.message, "code": exc.code}
        if isinstance(exc, LimitReached):
            headers["Retry-After"] = str(exc.retry_after_s)
            body["limit"] = exc.limit
        return JSONResponse(
            body,
            status_code=_STATUS_OF_ERROR.get(type(exc), status.HTTP_400_BAD_REQUEST),
            headers=headers,
        )

    app.add_exception_handler(ChatError, chat_error)


# --- assistants ------------------------------------------------------------------------------


@router.post("/assistants/", status_code=status.HTTP_201_CREATED, response_model=AssistantOut)
async def create_assistant(
    body: AssistantCreate, principal: CurrentPrincipal, gw: GatewayDep
) -> AssistantOut:
    async with gw.unit_of_work() as session:
        assistant = await gw.chat.create_assistant(
            session, principal.user_id, body, principal.roles
        )
    return AssistantOut.model_validate(assistant)


@router.get("/assistants/", response_model=Page[AssistantOut])
async def list_assistants(
    principal: CurrentPrincipal, gw: GatewayDep, skip: Skip = 0, limit: Limit = DEFAULT_PAGE_SIZE
) -> Page[AssistantOut]:
    async with gw.unit_of_work() as session:
        items, total = await gw.chat.list_assistants(session, principal.user_id, skip, limit)
    return Page(
        items=[AssistantOut.model_validate(a) for a in items], total=total, skip=skip, limit=limit
    )


@router.get("/assistants/{assistant_id}", response_model=AssistantOut)
async def get_assistant(
    assistant_id: str, principal: CurrentPrincipal, gw: GatewayDep
) -> AssistantOut:
    async with gw.unit_of_work() as session:
        return AssistantOut.model_validate(
            await gw.chat.get_assistant(session, principal.user_id, assistant_id)
        )


@router.patch("/assistants/{assistant_id}", response_model=AssistantOut)
async def update_assistant(
    assistant_id: str, body: AssistantUpdate, principal: CurrentPrincipal, gw: GatewayDep
) -> AssistantOut:
    async with gw.unit_of_work() as session:
        assistant = await gw.chat.update_assistant(
            session, principal.user_id, assistant_id, body, principal.roles
        )
    return AssistantOut.model_validate(assistant)


@router.delete("/assistants/{assistant_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_assistant(assistant_id: str, principal: CurrentPrincipal, gw: GatewayDep) -> None:
    async with gw.unit_of_work() as session:
        await gw.chat.delete_assistant(session, principal.user_id, assistant_id)


# --- conversations ---------------------------------------------------------------------------


@router.post("/conversations/", status_code=status.HTTP_201_CREATED, response_model=ConversationOut)
async def create_conversation(
    body: ConversationCreate, principal: CurrentPrincipal, gw: GatewayDep
) -> ConversationOut:
    async with gw.unit_of_work() as session:
        conversation = await gw.chat.create_conversation(
            session, principal.user_id, body, principal.roles
        )
    return ConversationOut.model_validate(conversation)


@router.get("/conversations/", response_model=Page[ConversationOut])
async def list_conversations(
    principal: CurrentPrincipal,
    gw: GatewayDep,
    q: Annotated[str | None, Query(max_length=MAX_SEARCH_LENGTH)] = None,
    status_filter: Annotated[ConversationStatus | None, Query(alias="status")] = None,
    skip: Skip = 0,
    limit: Limit = DEFAULT_PAGE_SIZE,
) -> Page[ConversationOut]:
    async with gw.unit_of_work() as session:
        items, total = await gw.chat.list_conversations(
            session,
            principal.user_id,
            search=q or None,
            status=status_filter,
            skip=skip,
            limit=limit,
        )
    return Page(
        items=[ConversationOut.model_validate(c) for c in items],
        total=total,
        skip=skip,
        limit=limit,
    )


@router.get("/conversations/{conversation_id}", response_model=ConversationOut)
async def get_conversation(
    conversation_id: str, principal: CurrentPrincipal, gw: GatewayDep
) -> ConversationOut:
    async with gw.unit_of_work() as session:
        conversation = await gw.chat.get_conversation(session, principal.user_id, conversation_id)
    return ConversationOut.model_validate(conversation)


@router.patch("/conversations/{conversation_id}", response_model=ConversationOut)
async def rename_conversation(
    conversation_id: str, body: ConversationUpdate, principal: CurrentPrincipal, gw: GatewayDep
) -> ConversationOut:
    async with gw.unit_of_work() as session:
        conversation = await gw.chat.rename_conversation(
            session, principal.user_id, conversation_id, body.title
        )
    return ConversationOut.model_validate(conversation)


@router.delete("/conversations/{conversation_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_conversation(
    conversation_id: str, principal: CurrentPrincipal, gw: GatewayDep
) -> None:
    async with gw.unit_of_work() as session:
        await gw.chat.delete_conversation(session, principal.user_id, conversation_id)


@router.post("/conversations/{conversation_id}/end", response_model=ConversationOut)
async def end_conversation(
    conversation_id: str, principal: CurrentPrincipal, gw: GatewayDep
) -> ConversationOut:
    async with gw.unit_of_work() as session:
        conversation = await gw.chat.end_conversation(session, principal.user_id, conversation_id)
    return ConversationOut.model_validate(conversation)


@router.get("/conversations/{conversation_id}/stats", response_model=ConversationStats)
async def conversation_stats(
    conversation_id: str, principal: CurrentPrincipal, gw: GatewayDep
) -> ConversationStats:
    async with gw.unit_of_work() as session:
        return await gw.chat.conversation_stats(session, principal.user_id, conversation_id)


# --- messages --------------------------------------------------------------------------------


@router.get("/conversations/{conversation_id}/messages", response_model=Page[MessageOut])
async def list_messages(
    conversation_id: str,
    principal: CurrentPrincipal,
    gw: GatewayDep,
    skip: Skip = 0,
    limit: Limit = 50,
) -> Page[MessageOut]:
    async with gw.unit_of_work() as session:
        items, total = await gw.chat.list_messages(
            session, principal.user_id, conversation_id, skip, limit
        )
    sources = await gw.knowledge.sources_of_replies(
        [m.id for m in items if m.role == MessageRole.ASSISTANT]
    )
    return Page(
        items=[
            MessageOut.model_validate(m).model_copy(update={"sources": sources.get(m.id, [])})
            for m in items
        ],
        total=total,
        skip=skip,
        limit=limit,
    )


class _ReplyWaiter:
    """Wakes a `?wait=true` request when a terminal frame for its message goes by."""

    def __init__(self, message_id: str) -> None:
        self.message_id = message_id
        self.event = asyncio.Event()

    def deliver(self, frame: StreamFrame, wire: str | None = None) -> None:
        terminal = ReplyCompletedFrame | ReplyFailedFrame | ReplyCancelledFrame
        if isinstance(frame, terminal) and frame.reply_to == self.message_id:
            self.event.set()

    def broker_recovered(self) -> None:
        self.event.set()


async def _wait_for_reply(gw: Gateway, message_id: str, waiter: _ReplyWaiter) -> Message | None:
    deadline = time.monotonic() + gw.settings.wait_reply_timeout_s
    while True:
        async with gw.unit_of_work() as session:
            reply = await gw.chat.find_reply(session, message_id)
        if reply is not None and is_finished(reply.status):
            return reply
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        waiter.event.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waiter.event.wait(), min(remaining, REPLY_POLL_INTERVAL_S))


@router.post(
    "/conversations/{conversation_id}/messages",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=MessageAccepted,
    responses={200: {"description": "With `wait=true`: the reply finished within the timeout."}},
)
async def send_message(
    conversation_id: str,
    body: MessageCreate,
    principal: CurrentPrincipal,
    gw: GatewayDep,
    response: Response,
    wait: bool = False,
) -> MessageAccepted:
    """Accept a user message (202). With `wait=true`, answer with the finished reply (200), or
    202 without it when the reply is not done within the gateway's wait timeout."""
    if not wait:
        async with gw.unit_of_work() as session:
            accepted = await gw.chat.send_message(
                session, principal.user_id, conversation_id, body.content, body.client_message_id
            )
        return _accepted(conversation_id, accepted, None)
    waiter = _ReplyWaiter("")
    watching = False
    try:
        async with gw.unit_of_work() as session:
            # Ownership, then watch before storing, so the reply's last frame cannot slip past.
            await gw.chat.get_conversation(session, principal.user_id, conversation_id)
            try:
                await gw.fanout.watch(conversation_id, waiter)
                watching = True
            except StreamUnavailable:
                pass  # the database poll alone still finds the reply
            accepted = await gw.chat.send_message(
                session, principal.user_id, conversation_id, body.content, body.client_message_id
            )
        waiter.message_id = accepted.message_id
        reply = await _wait_for_reply(gw, accepted.message_id, waiter)
    finally:
        if watching:
            await gw.fanout.unwatch(conversation_id, waiter)
    if reply is not None:
        response.status_code = status.HTTP_200_OK
    return _accepted(conversation_id, accepted, reply)


def _accepted(
    conversation_id: str, accepted: AcceptedMessage, reply: Message | None
) -> MessageAccepted:
    return MessageAccepted(
        message_id=accepted.message_id,
        conversation_id=conversation_id,
        client_message_id=accepted.client_message_id,
        duplicate=accepted.duplicate,
        reply=MessageOut.model_validate(reply) if reply is not None else None,
    )

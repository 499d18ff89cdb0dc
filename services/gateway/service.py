"""What the gateway does with conversations, messages and assistants (no HTTP or WebSocket here).

The REST routes and the WebSocket frame handlers both call `ChatService`. The edge owns the
unit of work: it opens the session (`Gateway.unit_of_work`), every method here works in it and
stages its events in it, and the edge commits, after which the events are published. Nothing here
commits. The one exception is the user message itself: a single statement that stores the message
with its event, run alone in autocommit when the edge's unit has not begun (the hot path).

Over 400 lines on purpose: one small method per operation of the two edges, and `send_message`
kept whole so its admission, retry and duplicate decisions read in one place.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from services.budgets.admission import Admission, OverLimit, over_limit_from
from services.chat.models import (
    Assistant,
    Conversation,
    ConversationStatus,
    Message,
)
from services.gateway import repository
from services.gateway.admissions import AdmissionPolicy
from services.gateway.errors import (
    BudgetExceeded,
    Conflict,
    InvalidInput,
    LimitReached,
    NotFound,
    RateLimited,
)
from services.gateway.model_access import ModelAccess
from services.gateway.schemas import (
    AssistantCreate,
    AssistantUpdate,
    ConversationCreate,
    ConversationStats,
)
from shared.db import DatabaseConnectionLost, statement_connection
from shared.events import (
    ConversationCreated,
    ConversationDeleted,
    ConversationEnded,
    ConversationRenamed,
    MessageSent,
)
from shared.ids import ANONYMOUS_OWNER_PREFIX, IdKind, is_valid_id, new_id
from shared.outbox import Outbox, StagedEvent

PRODUCER = "gateway"
DEFAULT_TITLE = "New conversation"
ANONYMOUS_PREFIX = ANONYMOUS_OWNER_PREFIX
"""Owner ids of anonymous sockets start with it; real user ids never contain it."""


def new_anonymous_owner_id() -> str:
    return ANONYMOUS_PREFIX + new_id(IdKind.USER)[1:]


def is_anonymous(owner_id: str) -> bool:
    return owner_id.startswith(ANONYMOUS_PREFIX)


@dataclass(frozen=True)
class AcceptedMessage:
    """A user message as stored: by this request, or earlier (`duplicate`, a resend)."""

    message_id: str
    client_message_id: str | None
    duplicate: bool


class ChatService:
    def __init__(
        self,
        engine: AsyncEngine,
        outbox: Outbox,
        *,
        max_message_length: int,
        admissions: AdmissionPolicy,
        models: ModelAccess,
    ) -> None:
        self._engine = engine
        self._outbox = outbox
        self._max_message_length = max_message_length
        self._admissions = admissions
        self.models = models
        """Only models the operator allows a caller's roles: a client must not pick the most
        expensive one."""

    # --- assistants ----------------------------------------------------------------------

    async def create_assistant(
        self, session: AsyncSession, owner_id: str, data: AssistantCreate, roles: Collection[str]
    ) -> Assistant:
        self.models.check(data.model, roles)
        assistant = Assistant(
            id=new_id(IdKind.ASSISTANT),
            owner_id=owner_id,
            name=data.name,
            system_prompt=data.system_prompt,
            model=data.model,
            temperature=data.temperature,
        )
        session.add(assistant)
        await session.flush()
        await session.refresh(assistant)
        return assistant

    async def get_assistant(
        self, session: AsyncSession, owner_id: str, assistant_id: str
    ) -> Assistant:
        return await self._owned_assistant(session, owner_id, assistant_id)

    async def list_assistants(
        self, session: AsyncSession, owner_id: str, skip: int, limit: int
    ) -> tuple[Sequence[Assistant], int]:
        return await repository.list_assistants(session, owner_id, skip, limit)

    async def update_assistant(
        self,
        session: AsyncSession,
        owner_id: str,
        assistant_id: str,
        data: AssistantUpdate,
        roles: Collection[str],
    ) -> Assistant:
        self.models.check(data.model, roles)
        assistant = await self._owned_assistant(session, owner_id, assistant_id)
        for field, value in data.model_dump(exclude_unset=True).items():
            if field in ("name", "system_prompt") and value is None:
                raise InvalidInput(f"{field} cannot be null")
            setattr(assistant, field, value)
        await session.flush()
        await session.refresh(assistant)
        return assistant

    async def delete_assistant(
        self, session: AsyncSession, owner_id: str, assistant_id: str
    ) -> None:
        assistant = await self._owned_assistant(session, owner_id, assistant_id)
        await session.delete(assistant)

    async def _owned_assistant(
        self, session: AsyncSession, owner_id: str, assistant_id: str
    ) -> Assistant:
        assistant = None
        if is_valid_id(assistant_id, IdKind.ASSISTANT):
            assistant = await repository.get_assistant(session, owner_id, assistant_id)
        if assistant is None:
            raise NotFound("Assistant not found")
        return assistant

    # --- conversations -------------------------------------------------------------------

    async def create_conversation(
        self,
        session: AsyncSession,
        owner_id: str,
        data: ConversationCreate,
        roles: Collection[str],
    ) -> Conversation:
        self.models.check(data.model, roles)
        system_prompt, model, temperature = data.system_prompt, data.model, None
        if data.assistant_id is not None:
            assistant = await self._owned_assistant(session, owner_id, data.assistant_id)
            # What the caller sets explicitly wins over the assistant's defaults.
            system_prompt = system_prompt if system_prompt is not None else assistant.system_prompt
            model = model or assistant.model
            temperature = assistant.temperature
            # The assistant's model was allowed when it was saved; the list or the caller's
            # roles may have changed since.
            self.models.check(model, roles)
        conversation = Conversation(
            id=new_id(IdKind.CONVERSATION),
            owner_id=owner_id,
            title=data.title or DEFAULT_TITLE,
            assistant_id=data.assistant_id,
            system_prompt=system_prompt,
            model=model,
            temperature=temperature,
            status=ConversationStatus.ACTIVE.value,
        )
        session.add(conversation)
        await session.flush()
        await session.refresh(conversation)
        await self._outbox.stage(
            session,
            ConversationCreated(
                producer=PRODUCER,
                user_id=owner_id,
                conversation_id=conversation.id,
                assistant_id=conversation.assistant_id,
                model=conversation.model,
            ),
        )
        return conversation

    async def get_conversation(
        self, session: AsyncSession, owner_id: str, conversation_id: str
    ) -> Conversation:
        return await self._owned_conversation(session, owner_id, conversation_id)

    async def list_conversations(
        self,
        session: AsyncSession,
        owner_id: str,
        *,
        search: str | None,
        status: ConversationStatus | None,
        skip: int,
        limit: int,
    ) -> tuple[Sequence[Conversation], int]:
        return await repository.list_conversations(
            session, owner_id, search=search, status=status, skip=skip, limit=limit
        )

    async def rename_conversation(
        self, session: AsyncSession, owner_id: str, conversation_id: str, title: str
    ) -> Conversation:
        conversation = await self._owned_conversation(session, owner_id, conversation_id)
        if conversation.title != title:
            conversation.title = title
            await session.flush()
            await self._outbox.stage(
                session,
                ConversationRenamed(
                    producer=PRODUCER, user_id=owner_id, conversation_id=conversation_id
                ),
            )
        await session.refresh(conversation)
        return conversation

    async def end_conversation(
        self, session: AsyncSession, owner_id: str, conversation_id: str
    ) -> Conversation:
        """Idempotent: ending an ended conversation changes nothing and sends no event."""
        conversation = await self._owned_conversation(session, owner_id, conversation_id)
        if conversation.status != ConversationStatus.ENDED:
            conversation.status = ConversationStatus.ENDED.value
            await session.flush()
            await self._outbox.stage(
                session,
                ConversationEnded(
                    producer=PRODUCER, user_id=owner_id, conversation_id=conversation_id
                ),
            )
        await session.refresh(conversation)
        return conversation

    async def delete_conversation(
        self, session: AsyncSession, owner_id: str, conversation_id: str
    ) -> None:
        conversation = await self._owned_conversation(session, owner_id, conversation_id)
        await session.delete(conversation)
        await self._outbox.stage(
            session,
            ConversationDeleted(
                producer=PRODUCER, user_id=owner_id, conversation_id=conversation_id
            ),
        )

    async def conversation_stats(
        self, session: AsyncSession, owner_id: str, conversation_id: str
    ) -> ConversationStats:
        await self._owned_conversation(session, owner_id, conversation_id)
        row = await repository.conversation_stats(session, conversation_id)
        return ConversationStats(
            conversation_id=conversation_id,
            message_count=row.message_count,
            user_messages=row.user_messages,
            assistant_messages=row.assistant_messages,
            failed_replies=row.failed_replies,
            prompt_tokens=row.prompt_tokens,
            completion_tokens=row.completion_tokens,
            total_tokens=row.prompt_tokens + row.completion_tokens,
            avg_response_time_ms=row.avg_duration_ms,
            avg_ttft_ms=row.avg_ttft_ms,
        )

    async def _owned_conversation(
        self, session: AsyncSession, owner_id: str, conversation_id: str
    ) -> Conversation:
        conversation = None
        if is_valid_id(conversation_id, IdKind.CONVERSATION):
            conversation = await repository.get_conversation(session, owner_id, conversation_id)
        if conversation is None:
            raise NotFound("Conversation not found")
        return conversation

    # --- messages ------------------------------------------------------------------------

    async def list_messages(
        self, session: AsyncSession, owner_id: str, conversation_id: str, skip: int, limit: int
    ) -> tuple[Sequence[Message], int]:
        await self._owned_conversation(session, owner_id, conversation_id)
        return await repository.list_messages(session, conversation_id, skip, limit)

    async def recent_messages(
        self, session: AsyncSession, owner_id: str, conversation_id: str, limit: int
    ) -> list[Message]:
        await self._owned_conversation(session, owner_id, conversation_id)
        return await repository.recent_messages(session, conversation_id, limit)

    async def find_reply(self, session: AsyncSession, message_id: str) -> Message | None:
        return await repository.find_reply(session, message_id)

    async def send_message(
        self,
        session: AsyncSession,
        owner_id: str,
        conversation_id: str,
        content: str,
        client_message_id: str | None,
        *,
        rate_key: str | None = None,
        admission: Admission | None = None,
    ) -> AcceptedMessage:
        """Store a user message and its `message.sent` in one statement; the edge's unit of
        work publishes the event once it has committed (the statement joins that unit if it has
        begun, else it commits on its own).

        The same statement admits the message through the budget ledger (`admission`, by
        default a chat message's, charged to `rate_key` if given, else to the owner): over a
        limit, nothing is stored and `RateLimited` or `BudgetExceeded` is raised.

        A `client_message_id` seen before in this conversation returns the stored message and
        creates nothing, whether the first copy was committed long ago or a moment ago by a
        concurrent resend (the unique constraint decides the race). Resends are neither counted
        nor reserved: only a message the statement stores is admitted.
        """
        if not content.strip():
            raise InvalidInput("content must not be empty")
        if len(content) > self._max_message_length:
            raise InvalidInput(f"content longer than {self._max_message_length} characters")
        if not is_valid_id(conversation_id, IdKind.CONVERSATION):
            raise NotFound("Conversation not found")
        if admission is None:
            admission = self._admissions.chat_message(
                rate_key or owner_id, content, anonymous=is_anonymous(owner_id)
            )
        # Plain values, not an ORM `Message`: the statement writes the row, and building the
        # instrumented object cost ~3 % of a gateway's CPU per chat turn (profiled).
        message_id = new_id(IdKind.MESSAGE)
        event = StagedEvent.of(
            MessageSent(
                producer=PRODUCER,
                user_id=owner_id,
                conversation_id=conversation_id,
                message_id=message_id,
                content_length=len(content),
            )
        )
        new = _NewMessage(message_id, conversation_id, content, client_message_id)
        outcome = await self._store_message(session, owner_id, new, event, admission)
        # `earlier_id == message_id`: a retry found its own first try, committed after all.
        stored = outcome.stored_id is not None or outcome.earlier_id == message_id
        if (
            not stored
            and outcome.earlier_id is None
            and outcome.conversation_status == ConversationStatus.ACTIVE
        ):
            # Nothing stored and no copy seen: a concurrent resend won the unique constraint,
            # or this retry's own first try was still committing when the statement ran.
            own = await self._find_copy(session, owner_id, conversation_id, None, message_id)
            stored = own is not None
        if stored:
            self._outbox.publish_after_commit(session, event)
            return AcceptedMessage(message_id, client_message_id, duplicate=False)
        if outcome.conversation_status is None:
            raise NotFound("Conversation not found")
        if outcome.earlier_id is None and outcome.conversation_status == ConversationStatus.ENDED:
            raise Conflict("Conversation has ended")
        earlier = await self._find_copy(
            session, owner_id, conversation_id, client_message_id, outcome.earlier_id
        )
        if earlier is None:
            raise Conflict("message could not be stored; retry")
        return AcceptedMessage(earlier.id, earlier.client_message_id, duplicate=True)

    async def _store_message(
        self,
        session: AsyncSession,
        owner_id: str,
        message: _NewMessage,
        event: StagedEvent,
        admission: Admission,
    ) -> repository.StoreOutcome:
        try:
            try:
                return await self._store_message_once(session, owner_id, message, event, admission)
            except DatabaseConnectionLost:
                # Once more: a pooled connection may have died with a database restart. Safe
                # to repeat: the statement finds its own first copy if that one committed.
                # (Raised only by a statement that ran alone, never inside the edge's
                # transaction.)
                return await self._store_message_once(session, owner_id, message, event, admission)
        except Exception as exc:
            refusal = over_limit_from(exc)
            if refusal is None:
                raise
            raise _limit_reached(refusal) from None

    async def _store_message_once(
        self,
        session: AsyncSession,
        owner_id: str,
        message: _NewMessage,
        event: StagedEvent,
        admission: Admission,
    ) -> repository.StoreOutcome:
        async with statement_connection(session, self._engine) as connection:
            return await repository.store_user_message(
                connection,
                owner_id=owner_id,
                conversation_id=message.conversation_id,
                message_id=message.id,
                content=message.content,
                client_message_id=message.client_message_id,
                event=event,
                default_model=self._admissions.default_model,
                admission=admission,
                prices_json=self._admissions.prices_json,
            )

    async def _find_copy(
        self,
        session: AsyncSession,
        owner_id: str,
        conversation_id: str,
        client_message_id: str | None,
        message_id: str | None,
    ) -> Message | None:
        """The stored copy of a resent message, in a conversation `owner_id` owns."""
        await self._owned_conversation(session, owner_id, conversation_id)
        if message_id is not None:
            message = await session.get(Message, message_id)
            return message if message and message.conversation_id == conversation_id else None
        if client_message_id is None:
            return None
        return await repository.find_by_client_id(session, conversation_id, client_message_id)


@dataclass(frozen=True)
class _NewMessage:
    """A user message `send_message` is about to store."""

    id: str
    conversation_id: str
    content: str
    client_message_id: str | None


def _limit_reached(refusal: OverLimit) -> LimitReached:
    error = RateLimited if refusal.reason == RateLimited.code else BudgetExceeded
    return error(refusal.message, refusal.retry_after_s, refusal.limit)

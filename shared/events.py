"""The event catalogue (published as AsyncAPI): one pydantic model per domain event, routing key
= `type`.

Events are versioned by adding optional fields; consumers ignore fields they do not know, so an
older consumer keeps working when a producer adds one. A breaking change bumps `version`.

Longer than ~400 lines on purpose: this file is the broker contract, read as a whole (by a
reviewer of a new event, by the AsyncAPI document), with every event once in `KnownEvent` and
`EVENT_TYPES` beside the classes; split by producer, it would hide that list.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


def _now() -> datetime:
    return datetime.now(UTC)


class Event(BaseModel):
    """Envelope every event carries."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    routing_key: ClassVar[str]

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    type: str
    version: int = 1
    occurred_at: datetime = Field(default_factory=_now)
    producer: str
    user_id: str | None = None
    correlation_id: str | None = None

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        default = cls.model_fields["type"].default
        if isinstance(default, str):
            cls.routing_key = default


# --- users ---------------------------------------------------------------------------------


class UserRegistered(Event):
    """Sent when a new account is created (self-registration, admin or CLI)."""

    type: Literal["user.registered"] = "user.registered"
    username: str
    roles: list[str] = Field(default_factory=list)
    ip: str | None = None
    user_agent: str | None = None


class UserLoggedIn(Event):
    """Sent when a user exchanges correct credentials for tokens."""

    type: Literal["user.logged_in"] = "user.logged_in"
    username: str
    ip: str | None = None
    user_agent: str | None = None


class UserLoginFailed(Event):
    """Sent when a login attempt is refused (wrong password, unknown user, locked, inactive)."""

    type: Literal["user.login_failed"] = "user.login_failed"
    username_attempted: str | None = None
    """The account's username; None for a name no account has (it is never the typed text)."""
    reason: str
    ip: str | None = None
    user_agent: str | None = None


class UserLoggedOut(Event):
    """Sent when a user revokes their refresh token by logging out."""

    type: Literal["user.logged_out"] = "user.logged_out"
    ip: str | None = None
    user_agent: str | None = None


class UserUpdated(Event):
    """Sent when a user's profile, roles, active flag or password changes."""

    type: Literal["user.updated"] = "user.updated"
    changed_fields: list[str]
    roles: list[str] | None = None
    is_active: bool | None = None
    actor_id: str | None = None


class UserDeleted(Event):
    """Sent when an account is deleted; its tokens are void and its chat data is removed."""

    type: Literal["user.deleted"] = "user.deleted"
    actor_id: str | None = None


class UserDeactivated(Event):
    """Sent when an admin deactivates an account; every token issued before is void."""

    type: Literal["user.deactivated"] = "user.deactivated"
    actor_id: str | None = None


class UserReactivated(Event):
    """Sent when an admin reactivates an account (it may log in again; old tokens stay void)."""

    type: Literal["user.reactivated"] = "user.reactivated"
    actor_id: str | None = None


class UserRoleChanged(Event):
    """Sent when an account's roles change; tokens issued before (old roles) are void."""

    type: Literal["user.role_changed"] = "user.role_changed"
    roles: list[str]
    actor_id: str | None = None


class UserSessionsRevoked(Event):
    """Sent when every session of an account ends (password change, "log out everywhere");
    every token issued before is void."""

    type: Literal["user.sessions_revoked"] = "user.sessions_revoked"
    reason: Literal["password_changed", "logout_everywhere"]


ACCESS_REVOKING_EVENTS: tuple[type[Event], ...] = (
    UserDeactivated,
    UserRoleChanged,
    UserDeleted,
    UserSessionsRevoked,
)
"""After one of these, access tokens of its `user_id` issued before its `occurred_at` are void."""


# --- api keys ------------------------------------------------------------------------------


class ApiKeyCreated(Event):
    """Sent when a user (or an admin for them) creates a key for the OpenAI-compatible API."""

    type: Literal["api_key.created"] = "api_key.created"
    key_id: str
    name: str
    prefix: str
    expires_at: datetime | None = None
    store_content: bool = False


class ApiKeyRevoked(Event):
    """Sent when a key is revoked; `user_id` is the key's owner, `actor_id` who revoked it."""

    type: Literal["api_key.revoked"] = "api_key.revoked"
    key_id: str
    actor_id: str | None = None


# --- conversations -------------------------------------------------------------------------


class ConversationCreated(Event):
    """Sent when a user starts a conversation."""

    type: Literal["conversation.created"] = "conversation.created"
    conversation_id: str
    assistant_id: str | None = None
    model: str | None = None


class ConversationRenamed(Event):
    """Sent when a conversation's title changes."""

    type: Literal["conversation.renamed"] = "conversation.renamed"
    conversation_id: str


class ConversationEnded(Event):
    """Sent when a user ends a conversation (it accepts no more messages)."""

    type: Literal["conversation.ended"] = "conversation.ended"
    conversation_id: str


class ConversationDeleted(Event):
    """Sent when a conversation and its messages are deleted."""

    type: Literal["conversation.deleted"] = "conversation.deleted"
    conversation_id: str


# --- messages and replies ------------------------------------------------------------------


class MessageSent(Event):
    """Sent when the gateway has stored a user's message; it asks the workers for a reply."""

    type: Literal["message.sent"] = "message.sent"
    conversation_id: str
    message_id: str
    content_length: int = 0


class ReplyStarted(Event):
    """Sent when a worker takes over a reply another worker left unfinished: the reply starts
    over as attempt `attempt`. A first attempt sends none: its `reply.started` frame tells the
    clients, and its outcome event carries all analytics keeps (`ttft_ms`, `duration_ms`)."""

    type: Literal["reply.started"] = "reply.started"
    conversation_id: str
    message_id: str
    reply_to: str
    model: str
    attempt: int = 1
    api_key_id: str | None = None
    """The API key of a `/v1` request (None: WebSocket chat, REST, or an access token)."""


class SourceRef(BaseModel):
    """A part of an assistant's knowledge file that a reply's prompt included."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    file_id: str
    name: str
    positions: list[int]
    """Chunk positions (0-based, in file order) used from this file."""


class ReplyCompleted(Event):
    """Sent when a reply has been fully generated and stored."""

    type: Literal["reply.completed"] = "reply.completed"
    conversation_id: str
    message_id: str
    reply_to: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_ms: float = 0.0
    duration_ms: float = 0.0
    finish_reason: str | None = None
    sources: list[SourceRef] = Field(default_factory=list)
    """Knowledge-file chunks the prompt included (empty without an assistant's files)."""
    usage_estimated: bool = False
    """The model reported no usage: the token counts were estimated from the text."""
    api_key_id: str | None = None
    """The API key of a `/v1` request (None: WebSocket chat, REST, or an access token)."""


class ReplyFailed(Event):
    """Sent when a reply could not be generated; `error_code` is what the client shows."""

    type: Literal["reply.failed"] = "reply.failed"
    conversation_id: str
    message_id: str
    reply_to: str
    model: str | None = None
    error_code: str
    duration_ms: float = 0.0
    api_key_id: str | None = None
    """The API key of a `/v1` request (None: WebSocket chat, REST, or an access token)."""


class ReplyCancelled(Event):
    """Sent when a user stopped a reply mid-stream; the partial reply is stored."""

    type: Literal["reply.cancelled"] = "reply.cancelled"
    conversation_id: str
    message_id: str
    reply_to: str
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    duration_ms: float = 0.0
    usage_estimated: bool = False
    """True when the counts were estimated from the text (a stopped stream reports no usage)."""
    api_key_id: str | None = None
    """The API key of a `/v1` request (None: WebSocket chat, REST, or an access token)."""


# --- knowledge files -----------------------------------------------------------------------


class FileUploaded(Event):
    """Sent when a file has been stored for an assistant; it asks for extraction and indexing."""

    type: Literal["file.uploaded"] = "file.uploaded"
    file_id: str
    assistant_id: str
    name: str
    content_type: str
    size_bytes: int


class FileProcessed(Event):
    """Sent when a file's text has been extracted, chunked and indexed; answers may use it."""

    type: Literal["file.processed"] = "file.processed"
    file_id: str
    assistant_id: str
    chunks: int
    characters: int
    pages: int | None = None
    duration_ms: float = 0.0


class FileFailed(Event):
    """Sent when a file could not be indexed; `reason` is a code, `message` says what to do."""

    type: Literal["file.failed"] = "file.failed"
    file_id: str
    assistant_id: str
    reason: str
    message: str
    duration_ms: float = 0.0


# --- operations ----------------------------------------------------------------------------


class HttpRequestRecord(BaseModel):
    """One HTTP request as seen by a service's middleware."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    route: str
    method: str
    status: int
    duration_ms: float
    user_id: str | None = None
    occurred_at: datetime = Field(default_factory=_now)


class HttpRequestCompleted(Event):
    """Sent when a service has answered a batch of HTTP requests; one record per request."""

    type: Literal["http.request.completed"] = "http.request.completed"
    service: str
    requests: list[HttpRequestRecord]


KnownEvent = Annotated[
    UserRegistered
    | UserLoggedIn
    | UserLoginFailed
    | UserLoggedOut
    | UserUpdated
    | UserDeleted
    | UserDeactivated
    | UserReactivated
    | UserRoleChanged
    | UserSessionsRevoked
    | ApiKeyCreated
    | ApiKeyRevoked
    | ConversationCreated
    | ConversationRenamed
    | ConversationEnded
    | ConversationDeleted
    | MessageSent
    | ReplyStarted
    | ReplyCompleted
    | ReplyFailed
    | ReplyCancelled
    | FileUploaded
    | FileProcessed
    | FileFailed
    | HttpRequestCompleted,
    Field(discriminator="type"),
]

EVENT_TYPES: dict[str, type[Event]] = {
    cls.routing_key: cls
    for cls in (
        UserRegistered,
        UserLoggedIn,
        UserLoginFailed,
        UserLoggedOut,
        UserUpdated,
        UserDeleted,
        UserDeactivated,
        UserReactivated,
        UserRoleChanged,
        UserSessionsRevoked,
        ApiKeyCreated,
        ApiKeyRevoked,
        ConversationCreated,
        ConversationRenamed,
        ConversationEnded,
        ConversationDeleted,
        MessageSent,
        ReplyStarted,
        ReplyCompleted,
        ReplyFailed,
        ReplyCancelled,
        FileUploaded,
        FileProcessed,
        FileFailed,
        HttpRequestCompleted,
    )
}

_known_event_adapter: TypeAdapter[KnownEvent] = TypeAdapter(KnownEvent)
_envelope_adapter: TypeAdapter[dict[str, Any]] = TypeAdapter(dict[str, Any])


class UnknownEventType(ValueError):
    """Raised for a well-formed envelope whose `type` this code does not know."""

    def __init__(self, event_type: str) -> None:
        super().__init__(f"unknown event type {event_type!r}")
        self.event_type = event_type


def parse_event(raw: bytes | str | dict[str, Any]) -> Event:
    """Decode one event; raises `UnknownEventType` or pydantic's `ValidationError`."""
    data = raw if isinstance(raw, dict) else _envelope_adapter.validate_json(raw)
    event_type = data.get("type")
    if isinstance(event_type, str) and event_type not in EVENT_TYPES:
        raise UnknownEventType(event_type)
    return _known_event_adapter.validate_python(data)

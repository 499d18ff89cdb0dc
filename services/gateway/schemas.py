"""Request and response bodies of the gateway's REST API."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.chat.models import (
    MAX_MODEL_NAME_LENGTH,
    MAX_SYSTEM_PROMPT_LENGTH,
    MAX_TITLE_LENGTH,
    ConversationStatus,
)
from shared.events import SourceRef

MAX_ASSISTANT_NAME_LENGTH = 100
MAX_CLIENT_MESSAGE_ID_LENGTH = 64
MAX_SEARCH_LENGTH = 200


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class AssistantCreate(_Input):
    name: str = Field(min_length=1, max_length=MAX_ASSISTANT_NAME_LENGTH)
    system_prompt: str = Field(default="", max_length=MAX_SYSTEM_PROMPT_LENGTH)
    model: str | None = Field(default=None, min_length=1, max_length=MAX_MODEL_NAME_LENGTH)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)


class AssistantUpdate(_Input):
    name: str | None = Field(default=None, min_length=1, max_length=MAX_ASSISTANT_NAME_LENGTH)
    system_prompt: str | None = Field(default=None, max_length=MAX_SYSTEM_PROMPT_LENGTH)
    model: str | None = Field(default=None, min_length=1, max_length=MAX_MODEL_NAME_LENGTH)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)


class AssistantOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    system_prompt: str
    model: str | None
    temperature: float | None
    created_at: datetime
    updated_at: datetime


class ConversationCreate(_Input):
    title: str | None = Field(default=None, min_length=1, max_length=MAX_TITLE_LENGTH)
    system_prompt: str | None = Field(default=None, max_length=MAX_SYSTEM_PROMPT_LENGTH)
    model: str | None = Field(default=None, min_length=1, max_length=MAX_MODEL_NAME_LENGTH)
    assistant_id: str | None = Field(default=None, max_length=64)


class ConversationUpdate(_Input):
    title: str = Field(min_length=1, max_length=MAX_TITLE_LENGTH)


class ConversationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    title: str
    status: ConversationStatus
    assistant_id: str | None
    system_prompt: str | None
    model: str | None
    temperature: float | None
    created_at: datetime
    updated_at: datetime


class ConversationStats(BaseModel):
    conversation_id: str
    message_count: int
    user_messages: int
    assistant_messages: int
    failed_replies: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    avg_response_time_ms: float | None
    """Mean `duration_ms` of completed replies."""
    avg_ttft_ms: float | None


class MessageCreate(_Input):
    # Whitespace is meaningful in a chat message; only emptiness is refused.
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)

    content: str = Field(min_length=1)
    client_message_id: str | None = Field(
        default=None, min_length=1, max_length=MAX_CLIENT_MESSAGE_ID_LENGTH
    )


class MessageOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    conversation_id: str
    role: str
    content: str
    status: str
    reply_to: str | None
    client_message_id: str | None
    seq: int
    attempt: int
    model: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    usage_estimated: bool = False
    """For a reply: the model reported no usage, the token counts were estimated from the text."""
    ttft_ms: float | None
    duration_ms: float | None
    finish_reason: str | None
    error_code: str | None
    created_at: datetime
    sources: list[SourceRef] = Field(default_factory=list)
    """For a reply: the knowledge-file chunks its prompt included."""

    @field_validator("usage_estimated", mode="before")
    @classmethod
    def _unset_is_not_estimated(cls, value: object) -> object:
        # A message not yet flushed has no value for it (the database's default is false).
        return False if value is None else value


class MessageAccepted(BaseModel):
    message_id: str
    conversation_id: str
    client_message_id: str | None
    duplicate: bool
    """True when `client_message_id` named a message stored earlier (nothing new was created)."""
    reply: MessageOut | None = None
    """With `?wait=true`: the finished reply (complete, failed or cancelled), if it came in time."""

"""Tables of the `chat` schema, written by the gateway (conversations, user messages) and the
chat workers (replies); its migrations are in `migrations/` beside this file.

Invariants the database enforces, not the code:
- exactly one assistant reply per user message: `messages.reply_to` is unique;
- a resent `send_message` never creates a second message: (conversation_id, client_message_id)
  is unique.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import cast

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import schema_metadata
from shared.outbox import outbox_table


class Base(DeclarativeBase):
    """Tables of the `chat` schema."""

    metadata = schema_metadata("chat")


outbox = outbox_table(Base.metadata)

MAX_TITLE_LENGTH = 200
MAX_SYSTEM_PROMPT_LENGTH = 8000
MAX_MODEL_NAME_LENGTH = 100
MAX_WORKER_ID_LENGTH = 100


ORIGIN_CHAT = "chat"
ORIGIN_API = "api"


class ConversationStatus(StrEnum):
    ACTIVE = "active"
    ENDED = "ended"


class MessageRole(StrEnum):
    USER = "user"
    ASSISTANT = "assistant"


class MessageStatus(StrEnum):
    COMPLETE = "complete"
    """User messages are complete when stored; replies when fully generated."""
    STREAMING = "streaming"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Assistant(Base):
    """A user's named system prompt with model settings."""

    __tablename__ = "assistants"

    id: Mapped[str] = mapped_column(String(12), primary_key=True)
    owner_id: Mapped[str] = mapped_column(String(16), index=True)
    name: Mapped[str] = mapped_column(String(100))
    system_prompt: Mapped[str] = mapped_column(Text, default="")
    model: Mapped[str | None] = mapped_column(String(MAX_MODEL_NAME_LENGTH))
    temperature: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class Conversation(Base):
    __tablename__ = "conversations"
    __table_args__ = (Index("ix_conversations_owner_updated", "owner_id", "updated_at"),)

    id: Mapped[str] = mapped_column(String(12), primary_key=True)
    owner_id: Mapped[str] = mapped_column(String(16))
    title: Mapped[str] = mapped_column(String(MAX_TITLE_LENGTH), default="New conversation")
    assistant_id: Mapped[str | None] = mapped_column(
        String(12), ForeignKey("assistants.id", ondelete="SET NULL")
    )
    system_prompt: Mapped[str | None] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(String(MAX_MODEL_NAME_LENGTH))
    temperature: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16), default=ConversationStatus.ACTIVE)
    origin: Mapped[str] = mapped_column(String(8), default=ORIGIN_CHAT, server_default=ORIGIN_CHAT)
    """`api`: made by one `/v1/chat/completions` request, not shown in the chat's lists."""
    api_key_id: Mapped[str | None] = mapped_column(String(16))
    max_tokens: Mapped[int | None] = mapped_column(Integer)
    """The most tokens a reply may have (a `/v1` request's `max_tokens`); NULL: the worker's."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class Message(Base):
    __tablename__ = "messages"
    # Server-side timestamps come back with the INSERT (RETURNING), not a second SELECT.
    __mapper_args__ = {"eager_defaults": True}
    __table_args__ = (
        UniqueConstraint("reply_to", name="uq_messages_reply_to"),
        UniqueConstraint("conversation_id", "client_message_id", name="uq_messages_client_id"),
        Index("ix_messages_conversation_created", "conversation_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(10), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(
        String(12), ForeignKey("conversations.id", ondelete="CASCADE")
    )
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default=MessageStatus.COMPLETE)
    reply_to: Mapped[str | None] = mapped_column(
        String(10), ForeignKey("messages.id", ondelete="CASCADE")
    )
    client_message_id: Mapped[str | None] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(Integer, default=0)
    """For a reply: the stream `seq` its stored `content` includes (partial or final)."""
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    worker_id: Mapped[str | None] = mapped_column(String(MAX_WORKER_ID_LENGTH))
    """For a reply: the chat worker instance that generates (or generated) its current
    `attempt`; a subscribing gateway asks that worker alone what it has streamed so far."""
    model: Mapped[str | None] = mapped_column(String(MAX_MODEL_NAME_LENGTH))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    usage_estimated: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    """The model reported no usage: the token counts were estimated from the text."""
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    duration_ms: Mapped[float | None] = mapped_column(Float)
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    error_code: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


# Schema-qualified names for the hand-written hot-path statements (repositories' raw SQL).
MESSAGES = cast(Table, Message.__table__).fullname
CONVERSATIONS = cast(Table, Conversation.__table__).fullname
ASSISTANTS = cast(Table, Assistant.__table__).fullname
OUTBOX = outbox.fullname

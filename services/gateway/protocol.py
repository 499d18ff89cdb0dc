"""The chat WebSocket's frame protocol: what a client may send, what the server sends back,
the error codes of an `error` frame and the close codes. No I/O here.

The constants are the protocol's inventory: the protocol document is checked against them.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from services.chat.models import MAX_TITLE_LENGTH
from services.gateway.schemas import MAX_CLIENT_MESSAGE_ID_LENGTH
from shared.input_guards import UNSTORABLE_TEXT, has_unstorable_text
from shared.security import MAX_TOKEN_LENGTH

# --- close codes ----------------------------------------------------------------------------

CLOSE_NORMAL = 1000
CLOSE_GONE = 1006
"""Not sent: recorded when the client vanished without a close frame."""
CLOSE_POLICY_VIOLATION = 1008
"""Not authenticated, token expired, too many bad frames, too many frames per second."""
CLOSE_MESSAGE_TOO_BIG = 1009
"""A frame over the server's WebSocket size limit (uvicorn's `ws_max_size`, set in cli.py)."""
CLOSE_TRY_AGAIN_LATER = 1013
"""The client reads too slowly (its outgoing queue overflowed), or the gateway is catching up
on revoked sessions after a broker reconnect: reconnect shortly."""
CLOSE_ACCESS_REVOKED = 4001
"""The user's access was revoked — deactivated, deleted, roles changed, password changed or
"log out everywhere" — after the token was issued: log in again."""
CLOSE_TOO_MANY_SOCKETS = 4029
"""The user (or the anonymous client address) already has the most sockets allowed open on
this gateway (`CONVOAI_MAX_SOCKETS_PER_USER`, `CONVOAI_MAX_ANONYMOUS_SOCKETS_PER_ADDRESS`)."""

CLOSE_CODES = frozenset(
    {
        CLOSE_NORMAL,
        CLOSE_POLICY_VIOLATION,
        CLOSE_MESSAGE_TOO_BIG,
        CLOSE_TRY_AGAIN_LATER,
        CLOSE_ACCESS_REVOKED,
        CLOSE_TOO_MANY_SOCKETS,
    }
)
"""Close codes the server sends."""

# --- error codes (the `code` of an `error` frame) -------------------------------------------

BAD_FRAME_CODES = frozenset({"invalid_json", "unknown_type", "invalid_frame", "frame_too_large"})
AUTH_ERROR_CODES = frozenset(
    {
        "unauthenticated",
        "unauthorized",
        "token_expired",
        "user_mismatch",
        "already_authenticated",
        "anonymous_disabled",
        "access_revoked",
        "too_many_sockets",
    }
)
CHAT_ERROR_CODES = frozenset(
    {"bad_request", "not_found", "conflict", "invalid_input", "model_not_allowed"}
)
"""The codes of `services.gateway.service.ChatError` and its subclasses."""
ERROR_CODES = (
    BAD_FRAME_CODES
    | AUTH_ERROR_CODES
    | CHAT_ERROR_CODES
    | frozenset({"rate_limited", "budget_exceeded", "unavailable", "nothing_to_cancel"})
)

# --- server frame types ---------------------------------------------------------------------

REPLY_FRAME_TYPES = frozenset(
    {
        "reply.started",
        "reply.delta",
        "reply.retrying",
        "reply.completed",
        "reply.failed",
        "reply.cancelled",
    }
)
"""Frames of a reply as the chat workers publish them (`shared.stream`), forwarded as they are."""
SERVER_FRAME_TYPES = REPLY_FRAME_TYPES | frozenset(
    {
        "ready",
        "reauthenticated",
        "pong",
        "ack",
        "error",
        "snapshot",
        "unsubscribed",
        "conversation.started",
        "conversation.ended",
    }
)

# --- client frames --------------------------------------------------------------------------

MAX_FRAME_DEPTH = 32
"""Deepest nesting of arrays and objects a client frame may have (real frames have 2)."""

ConversationId = Annotated[str, Field(min_length=1, max_length=64)]


class _ClientFrame(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class AuthFrame(_ClientFrame):
    type: Literal["auth"]
    token: str | None = Field(default=None, min_length=1, max_length=MAX_TOKEN_LENGTH)
    anonymous: bool = False


class SubscribeFrame(_ClientFrame):
    type: Literal["subscribe"]
    conversation_id: ConversationId


class UnsubscribeFrame(_ClientFrame):
    type: Literal["unsubscribe"]
    conversation_id: ConversationId


class SendMessageFrame(_ClientFrame):
    type: Literal["send_message"]
    conversation_id: ConversationId
    content: str = Field(min_length=1)
    client_message_id: str = Field(min_length=1, max_length=MAX_CLIENT_MESSAGE_ID_LENGTH)


class StartConversationFrame(_ClientFrame):
    type: Literal["start_conversation"]
    title: str | None = Field(default=None, max_length=MAX_TITLE_LENGTH)
    system_message: str | None = None
    assistant_id: str | None = Field(default=None, max_length=64)
    model: str | None = None


class EndConversationFrame(_ClientFrame):
    type: Literal["end_conversation"]
    conversation_id: ConversationId


class CancelFrame(_ClientFrame):
    type: Literal["cancel"]
    conversation_id: ConversationId
    message_id: str | None = Field(default=None, max_length=64)


class PingFrame(_ClientFrame):
    type: Literal["ping"]


CLIENT_FRAMES: tuple[type[_ClientFrame], ...] = (
    AuthFrame,
    SubscribeFrame,
    UnsubscribeFrame,
    SendMessageFrame,
    StartConversationFrame,
    EndConversationFrame,
    CancelFrame,
    PingFrame,
)

ClientFrame = Annotated[
    AuthFrame
    | SubscribeFrame
    | UnsubscribeFrame
    | SendMessageFrame
    | StartConversationFrame
    | EndConversationFrame
    | CancelFrame
    | PingFrame,
    Field(discriminator="type"),
]
client_frame_adapter: TypeAdapter[ClientFrame] = TypeAdapter(ClientFrame)
CLIENT_FRAME_TYPES: frozenset[str] = frozenset(
    get_args(cls.model_fields["type"].annotation)[0] for cls in CLIENT_FRAMES
)


class BadFrame(Exception):
    """A client frame that cannot be parsed or validated; `code` is one of `BAD_FRAME_CODES`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def validation_summary(exc: ValidationError) -> str:
    # Field paths and reasons only: the offending input is never echoed back or logged.
    parts = [
        f"{'.'.join(str(p) for p in e['loc'][1:] or e['loc'])}: {e['msg']}"
        for e in exc.errors()[:3]
    ]
    return "; ".join(parts)


def _check_values(data: object) -> None:
    """Bound the nesting and refuse text the database cannot store, walking without recursion
    (a hostile frame must not cost a `RecursionError` and a traceback)."""
    pending: list[tuple[object, int]] = [(data, 1)]
    while pending:
        value, depth = pending.pop()
        if isinstance(value, str):
            if has_unstorable_text(value):
                raise BadFrame("invalid_input", UNSTORABLE_TEXT)
        elif isinstance(value, dict | list):
            if depth > MAX_FRAME_DEPTH:
                raise BadFrame("invalid_frame", f"frame nested deeper than {MAX_FRAME_DEPTH}")
            children = [*value.keys(), *value.values()] if isinstance(value, dict) else value
            pending.extend((child, depth + 1) for child in children)


def parse_client_frame(raw: str | bytes, max_bytes: int) -> ClientFrame:
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode())
    if size > max_bytes:
        raise BadFrame("frame_too_large", f"frame of {size} bytes exceeds {max_bytes}")
    try:
        data = json.loads(raw)
    except RecursionError:
        raise BadFrame("invalid_frame", f"frame nested deeper than {MAX_FRAME_DEPTH}") from None
    except ValueError:
        raise BadFrame("invalid_json", "frame is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadFrame("invalid_frame", "frame must be a JSON object")
    _check_values(data)
    frame_type = data.get("type")
    if not isinstance(frame_type, str) or frame_type not in CLIENT_FRAME_TYPES:
        raise BadFrame("unknown_type", "unknown or missing frame type")
    try:
        return client_frame_adapter.validate_python(data)
    except ValidationError as exc:
        raise BadFrame("invalid_frame", validation_summary(exc)) from None

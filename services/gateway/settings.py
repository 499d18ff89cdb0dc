from typing import Literal

from pydantic import Field

from services.budgets.pricing import PricingSettings
from services.chat.settings import ReplySettings


class GatewaySettings(ReplySettings, PricingSettings):
    """Settings of the gateway (env prefix CONVOAI_)."""

    allowed_origins: list[str] = Field(
        default_factory=lambda: ["http://localhost:8000", "http://127.0.0.1:8000"],
        description="Origins a browser WebSocket may connect from.",
    )
    auth_url: str = Field(
        default="http://127.0.0.1:8001",
        description="Auth's address: the web app's sign-in and /auth, /users calls are "
        "forwarded there, and API keys of the OpenAI-compatible API are checked there.",
    )
    api_key_cache_s: float = Field(
        default=60.0,
        ge=0,
        le=3600,
        description="How long a gateway keeps auth's answer for an API key; a revoked key or "
        "owner is forgotten at once through the revocation stream (0: ask on every request).",
    )
    analytics_url: str = Field(
        default="http://127.0.0.1:8002",
        description="Where the web app's /api/v1/analytics calls are forwarded.",
    )
    max_message_length: int = Field(
        default=16_000, ge=1, le=1_000_000, description="Characters in one user message."
    )
    max_frame_bytes: int = Field(
        default=64 * 1024,
        ge=1024,
        le=1024 * 1024,
        description="Largest WebSocket frame the gateway parses; larger ones get an error frame.",
    )
    messages_per_minute: int = Field(
        default=30,
        ge=1,
        le=100_000,
        description="Chat messages (WebSocket and REST) per minute per user across all gateways, "
        "unless an admin set the user's own requests_per_minute.",
    )
    ws_auth_timeout_s: float = Field(
        default=10.0, gt=0, le=300, description="How long a socket may stay unauthenticated."
    )
    ws_frames_per_second: float = Field(
        default=50.0,
        gt=0,
        description="Sustained client frame rate before a socket is closed as abusive (1008).",
    )
    ws_frame_burst: int = Field(default=200, ge=1, description="Client frames allowed in a burst.")
    ws_max_errors: int = Field(
        default=50, ge=1, description="Bad frames one socket may send before it is closed (1008)."
    )
    ws_send_queue_size: int = Field(
        default=2000,
        ge=10,
        description="Frames queued for a slow socket before it is closed (1013).",
    )
    resync_timeout_s: float = Field(
        default=1.0,
        gt=0,
        le=30,
        description="How long a subscribe waits for the streaming worker's reply.snapshot (a "
        "worker that is gone, or says it holds no reply there, is not waited for).",
    )
    control_answer_timeout_s: float = Field(
        default=1.0,
        gt=0,
        le=30,
        description="How long a cancel waits for the worker holding the reply to answer before "
        "the client is told `nothing_to_cancel`.",
    )
    wait_reply_timeout_s: float = Field(
        default=60.0, gt=0, le=600, description="Longest wait of POST .../messages?wait=true."
    )
    max_sockets_per_user: int = Field(
        default=20, ge=1, le=10_000, description="Open chat sockets per user and gateway (4029)."
    )
    max_anonymous_sockets_per_address: int = Field(
        default=5,
        ge=1,
        le=10_000,
        description="Open anonymous chat sockets per client address and gateway (4029).",
    )
    allowed_models: list[str] = Field(
        default_factory=lambda: ["gpt-4o-mini"],
        description="Models a conversation, an assistant or an OpenAI API request may name "
        "(others: REST 400 / `model_not_allowed`, API 404 `model_not_found`); without a model "
        "the chat worker's default is used. With models_source=server: used until the model "
        "server's list has been read.",
    )
    models_source: Literal["settings", "server"] = Field(
        default="settings",
        description="`server`: the allow-list is what the model server's GET /models lists, "
        "read at start and every models_refresh_s (the last list read is kept while it cannot "
        "be reached); `settings`: allowed_models.",
    )
    models_refresh_s: float = Field(
        default=300.0, gt=0, le=86_400, description="How often the model server's list is read."
    )
    role_models: dict[str, list[str]] = Field(
        default_factory=dict,
        description='Per role, the allowed models it may use, e.g. {"user": ["gpt-4o-mini"]}; '
        "a caller may use those of any of its roles, a role not named here every allowed "
        "model, admins always every one; anonymous sockets count as role `anonymous`.",
    )
    llm_base_url: str = Field(
        default="http://127.0.0.1:8009/v1",
        description="The model server (OpenAI API root, with /v1), read for its models when "
        "models_source=server; the chat worker's setting of the same name.",
    )
    llm_api_key: str = Field(default="", repr=False)
    allow_anonymous: bool = Field(
        default=False,
        description='Sockets may authenticate with {"type":"auth","anonymous":true}: one '
        "ephemeral conversation, deleted when the socket closes, strict per-address limit.",
    )
    anonymous_messages_per_minute: int = Field(
        default=5,
        ge=1,
        le=10_000,
        description="Anonymous messages per minute per client address across all gateways.",
    )
    knowledge_max_file_bytes: int = Field(
        default=10 * 2**20, ge=1, description="Largest knowledge file an assistant accepts."
    )
    knowledge_max_files_per_assistant: int = Field(
        default=50, ge=1, description="Knowledge files one assistant may hold."
    )
    knowledge_max_bytes_per_user: int = Field(
        default=200 * 2**20, ge=1, description="Total bytes of knowledge files per user."
    )
    api_requests_per_minute: int = Field(
        default=600,
        ge=1,
        description="API requests per minute per user across all gateways (unless an admin "
        "set the user's own limit).",
    )
    api_default_max_tokens: int = Field(
        default=4096,
        ge=1,
        description="Reply tokens reserved from the budget when an API request sets no "
        "max_tokens, and for a chat message when max_reply_tokens is not set.",
    )
    reservation_ttl_s: float = Field(
        default=900.0,
        gt=0,
        description="A budget reservation no reply settled within this long is given back.",
    )

"""What a reply may be, read by the process that generates it (chat worker) and the one that
reserves its worst case from the user's budget before it is sent (gateway): one definition, so
both read the same `CONVOAI_*` variables the same way."""

from typing import Any

from pydantic import Field, field_validator

from shared.settings import ServiceSettings


class ReplySettings(ServiceSettings):
    default_model: str = Field(
        default="gpt-4o-mini",
        description="The model of a conversation when neither it nor its assistant names one.",
    )
    context_budget_tokens: int = Field(
        default=3000,
        ge=100,
        description="Approximate tokens of system prompt + history sent to the model; "
        "older messages are dropped first.",
    )
    max_reply_tokens: int | None = Field(
        default=4096,
        ge=1,
        description="max_tokens sent to the model when the request sets none; the budget "
        "reserves exactly this for a chat reply, so no reply can pass a budget by more than "
        "it. Empty: the model's default (then a long reply is charged in full and can pass "
        "a budget by the difference).",
    )
    max_reply_tokens_cap: int = Field(
        default=16_384,
        ge=1,
        description="The largest max_tokens sent to the model, whatever a request asks for.",
    )

    @field_validator("max_reply_tokens", mode="before")
    @classmethod
    def _empty_is_the_models_default(cls, value: Any) -> Any:
        # `CONVOAI_MAX_REPLY_TOKENS=` (set empty) means "no limit of ours".
        return None if isinstance(value, str) and value.strip().lower() in ("", "none") else value

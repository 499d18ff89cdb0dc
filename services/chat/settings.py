"""What a reply may be, read by the process that generates it (chat worker) and the one that
reserves its worst case from the user's budget before it is sent (gateway): one definition, so
both read the same `CONVOAI_*` variables the same way."""

from pydantic import Field

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
        default=None,
        ge=1,
        description="max_tokens sent to the model when the request sets none (none: the "
        "model's default).",
    )
    max_reply_tokens_cap: int = Field(
        default=16_384,
        ge=1,
        description="The largest max_tokens sent to the model, whatever a request asks for.",
    )

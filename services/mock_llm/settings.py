from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class MockLLMSettings(BaseSettings):
    """Settings of the built-in OpenAI-compatible mock (env prefix CONVOAI_MOCK_LLM_)."""

    model_config = SettingsConfigDict(env_prefix="CONVOAI_MOCK_LLM_", extra="ignore")

    instance_id: str = ""
    reply_tokens: int = Field(
        default=24, ge=1, le=100_000, description="Tokens (words) in every reply."
    )
    ttft_ms: float = Field(default=0.0, ge=0, description="Delay before the first token.")
    tokens_per_second: float = Field(
        default=0.0, ge=0, description="Pace of the following tokens; 0 streams without delay."
    )
    write_window_ms: float = Field(
        default=2.0,
        ge=0,
        description="Tokens due within this window go out in one write, a little early: fewer "
        "writes when hundreds of streams are paced (the rate stays tokens_per_second).",
    )
    models: list[str] = Field(
        default_factory=lambda: ["mock-gpt", "gpt-4o-mini"],
        description="What GET /v1/models lists; any requested model name is served.",
    )
    api_key: str = Field(
        default="", repr=False, description="When set, requests must carry it as a bearer token."
    )
    omit_usage: bool = Field(
        default=False,
        description="Never report usage (as some OpenAI-compatible servers do); a fault rule's "
        "omit_usage does it for the calls it matches.",
    )
    seed: str = Field(default="convoai", description="Changes every reply while keeping it stable.")
    recorded_requests: int = Field(
        default=200, ge=0, le=100_000, description="Latest requests kept for GET /_requests."
    )

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class MockLLMSettings(BaseSettings):
    """Settings of the built-in OpenAI-compatible mock (env prefix CONVOAI_MOCK_LLM_)."""

    model_config = SettingsConfigDict(env_prefix="CONVOAI_MOCK_LLM_", extra="ignore")

    port: int = Field(default=8009, ge=1, le=65535)
    instance_id: str = ""

from pydantic import Field

from shared.settings import ServiceSettings


class ChatWorkerSettings(ServiceSettings):
    """Settings of a chat worker (env prefix CONVOAI_)."""

    port: int = Field(default=8003, ge=1, le=65535)
    llm_base_url: str = "http://127.0.0.1:8009/v1"
    llm_api_key: str = Field(default="", repr=False)
    default_model: str = "gpt-4o-mini"
    prefetch: int = Field(
        default=256, ge=1, le=5000, description="In-flight chat requests per worker process."
    )

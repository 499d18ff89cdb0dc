from pydantic import Field

from shared.settings import ServiceSettings


class AnalyticsSettings(ServiceSettings):
    """Settings of the analytics consumer and dashboard API (env prefix CONVOAI_)."""

    port: int = Field(default=8002, ge=1, le=65535)

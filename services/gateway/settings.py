from pydantic import Field

from shared.settings import ServiceSettings


class GatewaySettings(ServiceSettings):
    """Settings of the gateway (env prefix CONVOAI_)."""

    port: int = Field(default=8000, ge=1, le=65535)

    allowed_origins: list[str] = Field(
        default_factory=lambda: ["http://localhost:8000", "http://127.0.0.1:8000"],
        description="Origins a browser WebSocket may connect from.",
    )

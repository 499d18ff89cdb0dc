"""Settings base: one `BaseSettings` subclass per service, env prefix CONVOAI_."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRET = "change-me-in-production-please-32-bytes!"
"""The development default; refused outside `environment=development`."""

DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/convoai"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


class ServiceSettings(BaseSettings):
    """What every process needs: where the broker and database are and how tokens are signed."""

    model_config = SettingsConfigDict(
        env_prefix="CONVOAI_", env_file=".env", extra="ignore", env_file_encoding="utf-8"
    )

    environment: Literal["development", "test", "production"] = "development"
    database_url: str = DEFAULT_DATABASE_URL
    amqp_url: str = DEFAULT_AMQP_URL
    namespace: str = Field(
        default="convoai",
        pattern=r"^[a-z][a-z0-9_-]{0,31}$",
        description="Prefix of every broker name, so test runs and deployments can share a broker.",
    )
    jwt_secret: str = Field(default=PLACEHOLDER_SECRET, min_length=32, repr=False)
    jwt_algorithm: Literal["HS256", "HS384", "HS512"] = "HS256"
    jwt_issuer: str = "convoai-auth"
    jwt_audience: str = "convoai"
    log_level: str = "INFO"
    log_format: Literal["json", "kv"] = "kv"
    instance_id: str = Field(
        default="", description="Distinguishes replicas of one service; generated when empty."
    )
    broker_connect_timeout_s: float = Field(default=30.0, ge=0, le=3600)
    http_metrics_enabled: bool = True
    max_request_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="Largest HTTP request body; larger ones get 413 while they stream in.",
    )
    trusted_proxies: str = Field(
        default="127.0.0.1",
        description=(
            "Comma-separated addresses or networks of the reverse proxies whose X-Forwarded-For "
            "is believed: the client address behind them drives rate limits, lockouts and "
            "logged IPs. Never `*` where clients can reach a service directly."
        ),
    )

    @model_validator(mode="after")
    def _refuse_placeholder_secret(self) -> ServiceSettings:
        if self.environment != "development" and self.jwt_secret == PLACEHOLDER_SECRET:
            raise ValueError(
                "CONVOAI_JWT_SECRET still holds the development placeholder; "
                f"set a random secret of at least 32 bytes (environment={self.environment})"
            )
        return self

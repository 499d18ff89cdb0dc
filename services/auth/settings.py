from pydantic import Field

from shared.settings import ServiceSettings


class AuthSettings(ServiceSettings):
    """Settings of the auth service (env prefix CONVOAI_)."""

    port: int = Field(default=8001, ge=1, le=65535)
    access_token_ttl_s: int = Field(default=15 * 60, ge=30, le=24 * 3600)
    refresh_token_ttl_s: int = Field(default=14 * 24 * 3600, ge=60, le=365 * 24 * 3600)
    admin_username: str | None = None
    admin_email: str | None = None
    admin_password: str | None = Field(default=None, repr=False)

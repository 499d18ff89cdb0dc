"""Request and response bodies of the auth API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, StringConstraints, model_validator

from services.auth.models import FULL_NAME_MAX_LENGTH
from services.auth.passwords import (
    PASSWORD_MAX_LENGTH,
    PASSWORD_MIN_LENGTH,
    password_policy_violation,
)
from shared.security import Role

Username = Annotated[
    str,
    StringConstraints(min_length=3, max_length=32, pattern=r"^[A-Za-z0-9_.-]+$"),
]
Password = Annotated[str, Field(min_length=PASSWORD_MIN_LENGTH, max_length=PASSWORD_MAX_LENGTH)]
FullName = Annotated[str, StringConstraints(strip_whitespace=True, max_length=FULL_NAME_MAX_LENGTH)]


class RegisterRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: Username
    email: EmailStr
    password: Annotated[str, Field(max_length=PASSWORD_MAX_LENGTH)]
    full_name: FullName | None = None

    @model_validator(mode="after")
    def _password_policy(self) -> RegisterRequest:
        violation = password_policy_violation(
            self.password, username=self.username, email=str(self.email)
        )
        if violation:
            raise ValueError(violation)
        return self


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    username: str
    email: str
    full_name: str | None
    roles: list[str]
    is_active: bool
    created_at: datetime
    updated_at: datetime
    last_login_at: datetime | None


class TokenResponse(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int
    refresh_token: str


class RefreshRequest(BaseModel):
    refresh_token: Annotated[str, Field(min_length=1, max_length=4096)]


class UserUpdate(BaseModel):
    """What an admin may change on an account."""

    model_config = ConfigDict(extra="forbid")

    full_name: FullName | None = None
    roles: Annotated[list[Role], Field(min_length=1, max_length=3)] | None = None
    is_active: bool | None = None


class MeUpdate(BaseModel):
    """What a user may change on their own account; a new password needs the current one."""

    model_config = ConfigDict(extra="forbid")

    full_name: FullName | None = None
    password: Password | None = None
    current_password: Annotated[str, Field(max_length=PASSWORD_MAX_LENGTH)] | None = None

    @model_validator(mode="after")
    def _current_password_with_new(self) -> MeUpdate:
        if self.password is not None and not self.current_password:
            raise ValueError("current_password is required to change the password")
        return self

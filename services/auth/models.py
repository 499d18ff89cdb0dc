"""Tables of the `auth` schema.

Invariants the database enforces, not the code:
- usernames and emails are unique regardless of case (unique indexes on `lower(...)`);
- a refresh token is stored only as its SHA-256 digest, unique;
- deleting a user deletes their refresh tokens (so a deleted user can never refresh).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    String,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import schema_metadata
from shared.outbox import outbox_table


class Base(DeclarativeBase):
    metadata = schema_metadata("auth")


outbox = outbox_table(Base.metadata)

USERNAME_MAX_LENGTH = 32
EMAIL_MAX_LENGTH = 254
FULL_NAME_MAX_LENGTH = 100

UNIQUE_USERNAME_INDEX = "uq_users_username_lower"
UNIQUE_EMAIL_INDEX = "uq_users_email_lower"


class User(Base):
    """An account: who may log in, with which roles."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    username: Mapped[str] = mapped_column(String(USERNAME_MAX_LENGTH))
    email: Mapped[str] = mapped_column(String(EMAIL_MAX_LENGTH))
    password_hash: Mapped[str] = mapped_column(String(255))
    full_name: Mapped[str | None] = mapped_column(String(FULL_NAME_MAX_LENGTH))
    roles: Mapped[list[str]] = mapped_column(ARRAY(String(16)))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index(UNIQUE_USERNAME_INDEX, func.lower(username), unique=True),
        Index(UNIQUE_EMAIL_INDEX, func.lower(email), unique=True),
        Index("ix_users_created_at", "created_at", "id"),
    )


class RefreshToken(Base):
    """One issued refresh token; a login starts a family, each refresh adds the next member."""

    __tablename__ = "refresh_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    """The token's `jti`."""
    family_id: Mapped[str] = mapped_column(String(32))
    user_id: Mapped[str] = mapped_column(
        String(16), ForeignKey("auth.users.id", ondelete="CASCADE")
    )
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    rotated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    """Set when it was exchanged for its successor; presenting it again is reuse."""
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_refresh_tokens_family_id", "family_id"),
        Index("ix_refresh_tokens_user_id", "user_id"),
    )


class LoginFailure(Base):
    """One refused login, keyed by account (or by the unknown name tried), for the lockout."""

    __tablename__ = "login_failures"

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    subject: Mapped[str] = mapped_column(String(300))
    failed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_login_failures_subject_failed_at", "subject", "failed_at"),)


API_KEY_PREFIX = "cvai-"
API_KEY_NAME_MAX_LENGTH = 100


class ApiKey(Base):
    """A user's key for the OpenAI-compatible API; only the SHA-256 of the secret is kept.

    The secret carries 256 random bits, so a plain digest (no salt, no slow hash) cannot be
    reversed, and it lets a gateway find the key with one indexed lookup per request.
    """

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    user_id: Mapped[str] = mapped_column(
        String(16), ForeignKey("auth.users.id", ondelete="CASCADE")
    )
    name: Mapped[str] = mapped_column(String(API_KEY_NAME_MAX_LENGTH))
    prefix: Mapped[str] = mapped_column(String(16))
    """The first characters of the secret, shown in listings so a user can tell keys apart."""
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    store_content: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_api_keys_user_id", "user_id"),)

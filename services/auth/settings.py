from pydantic import Field

from shared.settings import ServiceSettings

# OWASP Password Storage Cheat Sheet, argon2id minimum: m=19 MiB, t=2, p=1.
MIN_ARGON2_MEMORY_KIB = 19 * 1024
MIN_ARGON2_TIME_COST = 2


class AuthSettings(ServiceSettings):
    """Settings of the auth service (env prefix CONVOAI_)."""

    access_token_ttl_s: int = Field(default=15 * 60, ge=30, le=24 * 3600)
    refresh_token_ttl_s: int = Field(default=14 * 24 * 3600, ge=60, le=365 * 24 * 3600)

    password_hash_memory_kib: int = Field(default=MIN_ARGON2_MEMORY_KIB, ge=MIN_ARGON2_MEMORY_KIB)
    password_hash_time_cost: int = Field(default=MIN_ARGON2_TIME_COST, ge=MIN_ARGON2_TIME_COST)
    password_hash_parallelism: int = Field(default=1, ge=1, le=16)

    login_lockout_threshold: int = Field(default=5, ge=1, le=100)
    """Failed logins for one account (or one unknown name) that lock it ..."""
    login_lockout_window_s: float = Field(default=15 * 60, gt=0, le=24 * 3600)
    """... when they happen within this many seconds; the lock lasts until they age out.
    Counted per account *and* client address: a guesser locks only their own address."""
    login_lockout_account_threshold: int = Field(default=50, ge=1, le=100_000)
    """Failures on one account from all addresses together within the window after which every
    address that has failed on it is locked after one failure (a guesser with many addresses)."""
    refresh_reuse_grace_s: float = Field(default=10, ge=0, le=300)
    """A rotated refresh token used again within this many seconds is a concurrent refresh
    (several tabs), not theft: it gets a new pair of the same family (RFC 9700 §4.14.2)."""

    login_rate_limit: int = Field(default=20, ge=1)
    """Login attempts per client IP per `login_rate_window_s` (in-process, per replica)."""
    login_rate_window_s: float = Field(default=60, gt=0)
    register_rate_limit: int = Field(default=10, ge=1)
    """Registrations per client IP per `register_rate_window_s` (in-process, per replica)."""
    register_rate_window_s: float = Field(default=3600, gt=0)

    admin_username: str | None = None
    admin_email: str | None = None
    admin_password: str | None = Field(default=None, repr=False)

"""Password policy (zxcvbn strength estimate) and argon2id hashing (passlib, `libpass`)."""

from __future__ import annotations

import asyncio
import re
import secrets

from passlib.context import CryptContext
from zxcvbn import zxcvbn

PASSWORD_MIN_LENGTH = 8
PASSWORD_MAX_LENGTH = 128

MIN_STRENGTH_SCORE = 2
"""zxcvbn's 0-4 scale; below 2 a password falls to an online guessing attack (under 10^6
guesses), which is what common passwords such as `password1` do."""
ZXCVBN_MAX_LENGTH = 72
"""zxcvbn refuses longer input; a prefix this long decides the score of any real password."""

_LETTER = re.compile(r"[^\W\d_]")
_DIGIT = re.compile(r"\d")


def password_policy_violation(password: str, *, username: str, email: str) -> str | None:
    """Why `password` is not acceptable for this account, or None when it is."""
    if not PASSWORD_MIN_LENGTH <= len(password) <= PASSWORD_MAX_LENGTH:
        return f"password must be {PASSWORD_MIN_LENGTH} to {PASSWORD_MAX_LENGTH} characters long"
    if not _LETTER.search(password) or not _DIGIT.search(password):
        return "password must contain at least one letter and one digit"
    lowered = password.casefold()
    if lowered in (username.casefold(), email.casefold()):
        return "password must not be the same as the username or email"
    estimate = zxcvbn(password[:ZXCVBN_MAX_LENGTH], user_inputs=[username, email])
    if estimate["score"] < MIN_STRENGTH_SCORE:
        feedback = estimate["feedback"]
        reason = feedback.get("warning") or "It would be found quickly by guessing."
        tip = " ".join(feedback.get("suggestions") or [])
        return f"password is too easy to guess: {reason} {tip}".strip()
    return None


class PasswordHasher:
    """argon2id with configurable cost; verification also says when a hash needs upgrading.

    Hashing costs tens of milliseconds of CPU, so it runs in a worker thread instead of
    stalling every other request on the event loop.
    """

    def __init__(self, memory_kib: int, time_cost: int, parallelism: int) -> None:
        self._context = CryptContext(
            schemes=["argon2"],
            argon2__type="ID",
            argon2__memory_cost=memory_kib,
            argon2__rounds=time_cost,
            argon2__parallelism=parallelism,
        )
        # Verified against when the account does not exist, so an unknown name costs the same.
        self._dummy_hash = self._context.hash(secrets.token_urlsafe(16))

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._context.hash, password)

    async def verify(self, password: str, password_hash: str | None) -> tuple[bool, str | None]:
        """(matches, upgraded hash or None); with no hash, spends the same time and fails."""
        if password_hash is None:
            await asyncio.to_thread(self._context.verify, password, self._dummy_hash)
            return False, None
        ok, new_hash = await asyncio.to_thread(
            self._context.verify_and_update, password, password_hash
        )
        return bool(ok), new_hash

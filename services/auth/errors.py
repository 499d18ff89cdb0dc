"""Requests the auth rules refuse: raised, so the unit of work rolls back (staged events too)."""

from __future__ import annotations


class AccountError(Exception):
    """A request the rules refuse; nothing it did is kept."""


class DuplicateAccount(AccountError):
    def __init__(self, field: str) -> None:
        super().__init__(f"{field} already registered")
        self.field = field


class UserNotFound(AccountError):
    def __init__(self) -> None:
        super().__init__("User not found")


class LastAdmin(AccountError):
    def __init__(self) -> None:
        super().__init__("The last active admin cannot be removed, demoted or deactivated")


class PasswordPolicyViolation(AccountError):
    """The password breaks the policy (only reachable where the schema cannot see both sides)."""

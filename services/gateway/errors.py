"""Requests the gateway refuses: each has the `code` an `error` frame carries and, over REST,
an HTTP status (api.py)."""

from __future__ import annotations


class ChatError(Exception):
    """A request the gateway refuses; `code` is what a WebSocket `error` frame carries."""

    code = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(ChatError):
    code = "not_found"


class Conflict(ChatError):
    code = "conflict"


class InvalidInput(ChatError):
    code = "invalid_input"


class ModelNotAllowed(ChatError):
    code = "model_not_allowed"

    def __init__(self, model: str, allowed: frozenset[str]) -> None:
        super().__init__(f"model {model[:64]!r} is not allowed; use one of {sorted(allowed)}")


class LimitReached(ChatError):
    """Refused by a limit until `retry_after_s` (whole seconds) have passed; `limit` names it
    (`requests_per_minute`, `tokens_per_day`, `cost_per_month_usd`)."""

    def __init__(self, message: str, retry_after_s: int, limit: str) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.limit = limit


class RateLimited(LimitReached):
    code = "rate_limited"


class BudgetExceeded(LimitReached):
    code = "budget_exceeded"

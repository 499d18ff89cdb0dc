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


class RateLimited(ChatError):
    code = "rate_limited"

    def __init__(self, retry_after_s: float) -> None:
        super().__init__(f"too many messages; retry after {retry_after_s:.0f}s")
        self.retry_after_s = retry_after_s

"""The per-user limit on accepted messages: a strict count per sliding minute.

Not `shared.rate_limit.RateLimiter`: a token bucket of N refills while it is spent, so a user
could send nearly 2N messages in the first minute, and the documented limit is "N per minute".
"""

from __future__ import annotations

import math
import time
from collections import deque

from services.gateway.errors import RateLimited
from shared.rate_limit import Clock


class MessageRateLimiter:
    """Sliding one-minute window of accepted messages per user, in this process.

    Per instance on purpose: it is a cheap guard against a runaway client, not a quota; with N
    gateways the effective ceiling is N times the setting.
    """

    def __init__(
        self, per_minute: int, window_s: float = 60.0, clock: Clock = time.monotonic
    ) -> None:
        self._per_minute = per_minute
        self._window_s = window_s
        self._clock = clock
        self._sent: dict[str, deque[float]] = {}
        self._pruned_at = clock()

    def _prune(self, now: float) -> None:
        """Forget users idle for a whole window, so the table holds only recent senders."""
        self._sent = {k: v for k, v in self._sent.items() if v and now - v[-1] < self._window_s}
        self._pruned_at = now

    def check(self, key: str) -> None:
        """Count one message for `key`, or raise `RateLimited` without counting it."""
        now = self._clock()
        if now - self._pruned_at >= self._window_s:
            self._prune(now)
        sent = self._sent.setdefault(key, deque())
        while sent and now - sent[0] >= self._window_s:
            sent.popleft()
        if len(sent) >= self._per_minute:
            raise RateLimited(math.ceil(self._window_s - (now - sent[0])))
        sent.append(now)

    def refund(self, key: str) -> None:
        """A counted message was not stored after all (e.g. an idempotent resend)."""
        sent = self._sent.get(key)
        if sent:
            sent.pop()

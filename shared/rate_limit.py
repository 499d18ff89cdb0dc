"""Token-bucket rate limiting with an injected clock (tests move time instead of sleeping).

In-process: each replica limits on its own, so N replicas allow up to N times the rate. Use it
to take the edge off one noisy client, never as a quota a user could multiply by N.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

Clock = Callable[[], float]
"""Seconds on a monotonic scale (`time.monotonic` in production)."""

MAX_TRACKED_KEYS = 50_000


class TokenBucket:
    """`capacity` actions at once, refilling continuously at `refill_per_s`."""

    __slots__ = ("_capacity", "_refill_per_s", "tokens", "updated")

    def __init__(self, capacity: float, refill_per_s: float, now: float) -> None:
        self._capacity = capacity
        self._refill_per_s = refill_per_s
        self.tokens = capacity
        self.updated = now

    def take(self, now: float) -> float:
        """Take one token: 0 when allowed, else seconds until the next one is available."""
        self.tokens = min(self._capacity, self.tokens + (now - self.updated) * self._refill_per_s)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self._refill_per_s

    def give_back(self) -> None:
        """Return a token taken for an action that did not happen after all."""
        self.tokens = min(self._capacity, self.tokens + 1)

    def full_at(self) -> float:
        """When the bucket will be full again if nothing more is taken."""
        return self.updated + (self._capacity - self.tokens) / self._refill_per_s


class RateLimiter:
    """`limit` actions per `window_s` per key (client address, user id), as token buckets."""

    def __init__(
        self,
        limit: int,
        window_s: float,
        clock: Clock = time.monotonic,
        *,
        max_keys: int = MAX_TRACKED_KEYS,
    ) -> None:
        self._capacity = float(limit)
        self._refill_per_s = limit / window_s
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[str, TokenBucket] = {}

    def acquire(self, key: str) -> float:
        """Take one action for `key`: 0 when allowed, else seconds until the next one is."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._forget_idle(now)
            bucket = self._buckets[key] = TokenBucket(self._capacity, self._refill_per_s, now)
        return bucket.take(now)

    def refund(self, key: str) -> None:
        """An action counted for `key` did not happen after all (e.g. an idempotent resend)."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.give_back()

    def tracked_keys(self) -> int:
        return len(self._buckets)

    def _forget_idle(self, now: float) -> None:
        """Drop buckets that have refilled completely: forgetting them changes nothing."""
        idle = [k for k, b in self._buckets.items() if b.full_at() <= now]
        for key in idle:
            del self._buckets[key]
        if len(self._buckets) >= self._max_keys:
            # Under a flood of distinct keys, bound memory over precision.
            self._buckets.clear()


def retry_after_header(seconds: float) -> str:
    """A `Retry-After` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))

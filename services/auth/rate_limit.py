"""Per-client-IP rate limiting of login and registration.

In-process token buckets: each replica limits on its own, so N replicas behind a proxy allow
up to N times the configured rate. The per-account lockout (in Postgres) is what stops a
distributed password-guessing attack; this limiter only takes the edge off one noisy client.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

MAX_TRACKED_CLIENTS = 50_000


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """`limit` requests per `window_s` per key, refilling continuously (token bucket)."""

    def __init__(
        self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._capacity = float(limit)
        self._refill_per_s = limit / window_s
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def acquire(self, key: str) -> float:
        """Take one request for `key`: 0 when allowed, else seconds until the next one is."""
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_TRACKED_CLIENTS:
                self._forget_idle(now)
            bucket = self._buckets[key] = _Bucket(self._capacity, now)
        else:
            bucket.tokens = min(
                self._capacity, bucket.tokens + (now - bucket.updated) * self._refill_per_s
            )
            bucket.updated = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self._refill_per_s

    def _forget_idle(self, now: float) -> None:
        """Drop buckets that have refilled completely: forgetting them changes nothing."""
        full_after = self._capacity / self._refill_per_s
        idle = [k for k, b in self._buckets.items() if now - b.updated >= full_after]
        for key in idle:
            del self._buckets[key]
        if len(self._buckets) >= MAX_TRACKED_CLIENTS:
            # Under a flood of distinct addresses, bound memory over precision.
            self._buckets.clear()


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))

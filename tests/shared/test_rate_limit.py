"""The shared token-bucket limiter, on a clock the test moves (no sleeping)."""

from __future__ import annotations

from shared.rate_limit import RateLimiter, TokenBucket, retry_after_header


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_key_gets_its_burst_then_waits_for_the_refill():
    clock = FakeClock()
    limiter = RateLimiter(2, window_s=60, clock=clock)
    assert limiter.acquire("a") == 0
    assert limiter.acquire("a") == 0
    assert limiter.acquire("a") == 30.0  # one token per 30 s
    assert limiter.acquire("b") == 0  # keys are independent
    clock.now += 29.9
    assert limiter.acquire("a") > 0
    clock.now += 0.2
    assert limiter.acquire("a") == 0


def test_refund_returns_the_token_of_an_action_that_did_not_happen():
    clock = FakeClock()
    limiter = RateLimiter(1, window_s=60, clock=clock)
    assert limiter.acquire("a") == 0
    assert limiter.acquire("a") > 0
    limiter.refund("a")
    assert limiter.acquire("a") == 0
    limiter.refund("unknown")  # nothing to refund: no error, no new key
    assert limiter.tracked_keys() == 1


def test_a_refilled_bucket_never_holds_more_than_its_capacity():
    clock = FakeClock()
    limiter = RateLimiter(2, window_s=1, clock=clock)
    limiter.acquire("a")
    clock.now += 3600
    limiter.refund("a")
    assert [limiter.acquire("a") for _ in range(3)][:2] == [0, 0]
    assert limiter.acquire("a") > 0


def test_idle_keys_are_forgotten_when_the_table_is_full():
    clock = FakeClock()
    limiter = RateLimiter(1, window_s=10, clock=clock, max_keys=3)
    for key in ("a", "b", "c"):
        limiter.acquire(key)
    clock.now += 10  # a, b and c have refilled: forgetting them changes nothing
    limiter.acquire("d")
    assert limiter.tracked_keys() == 1


def test_a_flood_of_busy_keys_bounds_memory():
    clock = FakeClock()
    limiter = RateLimiter(1, window_s=10, clock=clock, max_keys=3)
    for key in ("a", "b", "c", "d"):
        limiter.acquire(key)
    assert limiter.tracked_keys() <= 3


def test_single_bucket_refills_continuously():
    bucket = TokenBucket(capacity=2, refill_per_s=4, now=0.0)
    assert bucket.take(0.0) == 0
    assert bucket.take(0.0) == 0
    assert bucket.take(0.0) == 0.25
    assert bucket.take(0.25) == 0
    assert bucket.full_at() == 0.75


def test_retry_after_is_whole_seconds_and_at_least_one():
    assert retry_after_header(0.01) == "1"
    assert retry_after_header(1.2) == "2"
    assert retry_after_header(30) == "30"

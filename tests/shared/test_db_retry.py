"""`DatabaseRetry` waits out outages (on a fake clock and sleep) and lets real errors through."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import DBAPIError

from shared.db_retry import DatabaseRetry, describe_database_error


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _failing(times: int, error: BaseException):
    calls = {"n": 0}

    async def operation() -> str:
        calls["n"] += 1
        if calls["n"] <= times:
            raise error
        return "done"

    return operation, calls


async def test_outage_is_waited_out_with_growing_delays():
    fake = FakeTime()
    retry = DatabaseRetry(first_delay_s=0.1, max_delay_s=0.5, clock=fake.clock, sleep=fake.sleep)
    operation, calls = _failing(5, ConnectionRefusedError("down"))
    assert await retry.run(operation) == "done"
    assert calls["n"] == 6
    assert fake.sleeps == [0.1, 0.2, 0.4, 0.5, 0.5]


async def test_other_errors_are_raised_at_once():
    fake = FakeTime()
    retry = DatabaseRetry(clock=fake.clock, sleep=fake.sleep)
    operation, calls = _failing(1, ValueError("bug"))
    with pytest.raises(ValueError):
        await retry.run(operation)
    assert calls["n"] == 1
    assert fake.sleeps == []


async def test_gives_up_after_its_limit_as_a_dbapi_error():
    fake = FakeTime()
    retry = DatabaseRetry(
        first_delay_s=1, max_delay_s=1, give_up_after_s=3, clock=fake.clock, sleep=fake.sleep
    )
    operation, calls = _failing(100, ConnectionRefusedError("down"))
    with pytest.raises(DBAPIError) as raised:
        await retry.run(operation)
    assert isinstance(raised.value.orig, ConnectionRefusedError)
    assert calls["n"] == 4  # at 0, 1, 2 and 3 seconds after the first failure


def test_description_leaves_out_the_statement():
    error = DBAPIError("SELECT secret_content", {"p": "secret"}, ConnectionRefusedError("down"))
    assert describe_database_error(error) == "ConnectionRefusedError: down"

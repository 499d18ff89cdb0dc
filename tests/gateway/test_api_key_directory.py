"""The gateway's memory of auth's answers about API keys: brief, and forgotten on revocation.

Auth is stood in for at the HTTP boundary (httpx's MockTransport) so the clock and the number of
questions are exact; the running stack's tests (tests/openai_api) prove the same end to end.
"""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from services.gateway.api_keys import ApiKeyDirectory, AuthUnavailable
from shared.events import ApiKeyRevoked
from shared.revocations import RevocationList

KEY = "cvai-" + "k" * 43
HOLDER = {
    "key_id": "key-1",
    "user_id": "user-1",
    "username": "ada",
    "roles": ["user"],
    "store_content": False,
    "expires_at": None,
}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def directory(answers: list[httpx.Response], clock: FakeClock, current: bool = True):
    asked: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked.append(request.headers["authorization"])
        return answers.pop(0)

    revocations = RevocationList(3600)
    if current:
        revocations.mark_current()
    keys = ApiKeyDirectory(
        "http://auth.test",
        revocations,
        cache_s=60,
        clock=clock,
        transport=httpx.MockTransport(handler),
    )
    return keys, asked, revocations


async def test_an_answer_is_kept_for_the_cache_time_then_asked_again() -> None:
    clock = FakeClock()
    keys, asked, _ = directory([httpx.Response(200, json=HOLDER)] * 2, clock)
    first = await keys.owner_of(KEY)
    clock.now += 59
    assert await keys.owner_of(KEY) == first
    assert asked == [f"Bearer {KEY}"]
    clock.now += 2
    assert (await keys.owner_of(KEY)).user_id == "user-1"
    assert len(asked) == 2


async def test_a_revoked_key_or_owner_is_asked_about_again_at_once() -> None:
    clock = FakeClock()
    keys, asked, _ = directory(
        [httpx.Response(200, json=HOLDER), httpx.Response(401), httpx.Response(200, json=HOLDER)],
        clock,
    )
    await keys.owner_of(KEY)
    keys.forget_key(ApiKeyRevoked(producer="auth", user_id="user-1", key_id="key-1"))
    assert await keys.owner_of(KEY) is None
    await keys.owner_of(KEY)
    keys.forget_user("user-1")
    keys.forget_user("someone-else")
    assert len(asked) == 3
    with pytest.raises(IndexError):  # no answer left: the entry really was forgotten
        await keys.owner_of(KEY)


async def test_nothing_is_kept_past_the_keys_expiry() -> None:
    clock = FakeClock()
    expiring = {**HOLDER, "expires_at": datetime.fromtimestamp(clock.now + 5, UTC).isoformat()}
    keys, asked, _ = directory([httpx.Response(200, json=expiring), httpx.Response(401)], clock)
    assert await keys.owner_of(KEY) is not None
    clock.now += 6
    assert await keys.owner_of(KEY) is None
    assert len(asked) == 2


async def test_while_revocations_are_behind_every_request_asks_auth() -> None:
    clock = FakeClock()
    keys, asked, _ = directory([httpx.Response(200, json=HOLDER)] * 2, clock, current=False)
    await keys.owner_of(KEY)
    await keys.owner_of(KEY)
    assert len(asked) == 2


async def test_refusals_are_not_kept_and_other_bearers_are_not_sent() -> None:
    clock = FakeClock()
    keys, asked, _ = directory([httpx.Response(401), httpx.Response(200, json=HOLDER)], clock)
    assert await keys.owner_of(KEY) is None
    assert await keys.owner_of(KEY) is not None
    assert await keys.owner_of("eyJhbGciOi.not-a-key") is None
    assert await keys.owner_of("cvai-" + "x" * 200) is None
    assert len(asked) == 2


async def test_auth_down_is_unavailable_not_refused() -> None:
    clock = FakeClock()
    keys, _, _ = directory([httpx.Response(502)], clock)
    with pytest.raises(AuthUnavailable):
        await keys.owner_of(KEY)

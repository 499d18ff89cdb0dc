"""Cost budgets (USD per month, priced by the analytics price table) and limits of one API key,
seen through the official `openai` SDK: refusals are 429 with `Retry-After`."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from decimal import Decimal

import httpx
import openai
import pytest

from services.budgets.admission import prompt_estimate
from services.budgets.pricing import PricingSettings
from tests.openai_api.conftest import create_key, sdk, set_limits, usage

pytestmark = pytest.mark.e2e

MODEL = "gpt-4o-mini"
PRICE = PricingSettings().price_table().price_of(MODEL)


def cost(prompt_tokens: int, completion_tokens: int) -> Decimal:
    assert PRICE is not None
    return (
        prompt_tokens * PRICE.input_per_million + completion_tokens * PRICE.output_per_million
    ) / 1_000_000


def seconds_to_next_month_utc() -> float:
    now = datetime.now(UTC)
    first = datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=UTC)
    return (first - now).total_seconds()


async def test_cost_budget_reserves_the_worst_case_and_charges_the_real_cost(
    stack, auth_http, new_api_user, admin_headers
):
    user = await new_api_user()
    client = sdk(stack, (await create_key(auth_http, user))["secret"])
    prompt = f"What do rivers cost {secrets.token_hex(4)}?"
    messages = [{"role": "user", "content": prompt}]

    first = await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=60)
    assert first.usage is not None
    real = cost(first.usage.prompt_tokens, first.usage.completion_tokens)
    assert real > 0
    charged = await usage(stack, user.headers)
    assert charged["used_usd_this_month"] == pytest.approx(float(real), abs=1e-12)
    assert charged["reserved_usd_this_month"] == 0

    # Room for two more worst cases of the same request (prompt estimate + 60 reply tokens).
    worst = cost(prompt_estimate(len(prompt), 1), 60)
    assert worst > real  # the reservation is the worst case, not the expected cost
    budget = real + 2 * worst
    await set_limits(stack, admin_headers, user.id, cost_per_month_usd=float(budget))
    second = await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=60)
    assert second.choices[0].message.content

    # What is left would pay for this reply's likely cost, but not for its worst case.
    with pytest.raises(openai.RateLimitError) as refused:
        await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4000)
    assert refused.value.status_code == 429
    assert refused.value.code == "budget_exceeded"
    assert refused.value.type == "insufficient_quota"
    retry_after = int(refused.value.response.headers["Retry-After"])
    assert abs(retry_after - seconds_to_next_month_utc()) < 30

    after = await usage(stack, user.headers)
    async with httpx.AsyncClient(base_url=stack.gateway_a.url, timeout=30) as admin:
        listed = await admin.get("/admin/budgets", params={"limit": 100}, headers=admin_headers)
        one = await admin.get(f"/admin/budgets/{user.id}", headers=admin_headers)
    assert listed.status_code == 200 and listed.json()["total"] >= 1
    assert all(item["user_id"] for item in listed.json()["items"])
    assert one.json() == after  # an admin sees what the user sees
    assert after["cost_per_month_usd"] == pytest.approx(float(budget))
    assert after["reserved_usd_this_month"] == 0 and after["reserved_tokens_today"] == 0
    assert after["requests_today"] == 2
    assert after["remaining_usd_this_month"] == pytest.approx(
        float(budget) - after["used_usd_this_month"], abs=1e-9
    )


async def test_limits_of_one_api_key_refuse_through_the_sdk(
    stack, auth_http, new_api_user, admin_headers
):
    user = await new_api_user()
    limited = await create_key(auth_http, user, name="limited")
    spare = await create_key(auth_http, user, name="spare")
    async with httpx.AsyncClient(base_url=stack.gateway_b.url, timeout=30) as admin:
        response = await admin.put(
            f"/admin/budgets/{user.id}/keys/{limited['id']}",
            json={"requests_per_minute": 2},
            headers=admin_headers,
        )
        assert response.status_code == 200, response.text
        assert [k["key_id"] for k in response.json()["keys"]] == [limited["id"]]
        # Auth does not list this user's key under another user.
        stranger = await new_api_user()
        elsewhere = await admin.put(
            f"/admin/budgets/{stranger.id}/keys/{limited['id']}",
            json={"tokens_per_day": 1},
            headers=admin_headers,
        )
        assert elsewhere.status_code == 404
        response = await admin.put(
            f"/admin/budgets/{user.id}/keys/{spare['id']}",
            json={"tokens_per_day": 10},
            headers=admin_headers,
        )
        assert response.status_code == 200, response.text

    messages = [{"role": "user", "content": f"hello {secrets.token_hex(4)}"}]
    first_minute = datetime.now(UTC).replace(second=0, microsecond=0)
    served = 0
    refusal: openai.RateLimitError | None = None
    for index in range(6):
        # Alternating gateways: the key's count is one row for all of them.
        client = sdk(stack, limited["secret"], "ab"[index % 2])
        try:
            await client.chat.completions.create(model="mock-model", messages=messages)
            served += 1
        except openai.RateLimitError as exc:
            refusal = exc
            break
    minutes = 1 + (datetime.now(UTC).replace(second=0, microsecond=0) > first_minute)
    assert refusal is not None
    assert served == 2 or (minutes == 2 and served <= 4)
    assert refusal.code == "rate_limited" and refusal.type == "rate_limit_exceeded"
    assert 1 <= int(refusal.response.headers["Retry-After"]) <= 60

    # The key's daily token budget (10) is smaller than any request's worst case.
    with pytest.raises(openai.RateLimitError) as over_budget:
        await sdk(stack, spare["secret"]).chat.completions.create(
            model="mock-model", messages=messages, max_tokens=5
        )
    assert over_budget.value.code == "budget_exceeded"
    assert int(over_budget.value.response.headers["Retry-After"]) >= 1

    # The user's own limits are untouched: an access token is not held back by the key's.
    whole = await sdk(stack, user.access_token).chat.completions.create(
        model="mock-model", messages=messages
    )
    assert whole.choices[0].message.content
    mine = await usage(stack, user.headers)
    keys = {k["key_id"]: k for k in mine["keys"]}
    assert keys[limited["id"]]["requests_per_minute"] == 2
    assert keys[limited["id"]]["requests_today"] == served
    assert keys[spare["id"]]["tokens_per_day"] == 10
    assert keys[spare["id"]]["requests_today"] == 0
    assert mine["requests_today"] == served + 1
    assert mine["reserved_tokens_today"] == 0

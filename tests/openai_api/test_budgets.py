"""The ledger across two gateway processes: a token budget under a race, a cluster-wide rate,
and nothing left reserved after a worker is killed mid-reply."""

from __future__ import annotations

import asyncio
import secrets
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tests.openai_api.conftest import STARTUP_TIMEOUT_S, create_key, set_limits, usage

pytestmark = pytest.mark.e2e


def completion(prompt: str, **extra: Any) -> dict[str, Any]:
    return {"model": "mock-model", "messages": [{"role": "user", "content": prompt}], **extra}


async def test_token_budget_race_across_two_gateways(stack, auth_http, new_api_user, admin_headers):
    user = await new_api_user()
    budget = 400
    await set_limits(stack, admin_headers, user.id, tokens_per_day=budget)
    key = (await create_key(auth_http, user))["secret"]
    headers = {"Authorization": f"Bearer {key}"}
    tag = secrets.token_hex(4)

    async def one(index: int) -> httpx.Response:
        gateway = stack.gateway_a if index % 2 else stack.gateway_b
        async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as client:
            return await client.post(
                "/v1/chat/completions",
                json=completion(f"race {tag} {index}", max_tokens=40),
                headers=headers,
            )

    responses = await asyncio.gather(*(one(i) for i in range(50)))
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert len(ok) + len(refused) == 50, [r.text for r in responses if r.status_code >= 500]
    assert ok and refused
    for response in refused:
        assert response.json()["error"]["code"] == "budget_exceeded"
        assert int(response.headers["Retry-After"]) >= 1
    served = sum(r.json()["usage"]["total_tokens"] for r in ok)
    ledger = await usage(stack, user.headers)
    assert ledger["reserved_tokens_today"] == 0
    assert ledger["used_tokens_today"] == served
    assert served <= budget


async def test_rate_is_cluster_wide(stack, auth_http, new_api_user, admin_headers):
    user = await new_api_user()
    per_minute = 4
    await set_limits(stack, admin_headers, user.id, requests_per_minute=per_minute)
    headers = {"Authorization": f"Bearer {(await create_key(auth_http, user))['secret']}"}
    first_minute = datetime.now(UTC).replace(second=0, microsecond=0)
    statuses = []
    for index in range(10):
        gateway = stack.gateway_a if index % 2 else stack.gateway_b
        async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as client:
            response = await client.post(
                "/v1/chat/completions", json=completion(f"rate {index}"), headers=headers
            )
        statuses.append(response.status_code)
        if response.status_code == 429:
            assert response.json()["error"]["code"] == "rate_limited"
            assert 1 <= int(response.headers["Retry-After"]) <= 60
    minutes = 1 + (datetime.now(UTC).replace(second=0, microsecond=0) > first_minute)
    assert set(statuses) <= {200, 429}
    # Per gateway it would be 2 x per_minute; the ledger row is shared.
    assert statuses.count(200) == per_minute or (minutes == 2 and statuses.count(200) <= 8)


async def test_worker_kill_leaves_nothing_reserved(stack, auth_http, new_api_user, start_service):
    user = await new_api_user()
    headers = {"Authorization": f"Bearer {(await create_key(auth_http, user))['secret']}"}
    tag = f"kill-{secrets.token_hex(4)}"
    async with httpx.AsyncClient(base_url=stack.mock_llm.url) as client:
        response = await client.post(
            "/_faults", json={"tokens_per_second": 8, "match": tag, "times": -1}
        )
        response.raise_for_status()
    async with httpx.AsyncClient(base_url=stack.gateway_a.url, timeout=60) as client:
        request = asyncio.create_task(
            client.post("/v1/chat/completions", json=completion(tag), headers=headers)
        )
        deadline = time.monotonic() + 20
        while (await usage(stack, user.headers))["reserved_tokens_today"] == 0:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        stack.worker.kill()
        replacement = start_service(
            "chat_worker",
            instance_id="worker-oai-2",
            CONVOAI_LLM_BASE_URL=f"{stack.mock_llm.url}/v1",
            CONVOAI_LLM_RETRY_BASE_S="0.1",
            CONVOAI_DATABASE_URL=stack.database_url,
            CONVOAI_NAMESPACE=stack.namespace,
            wait=False,
        )
        replacement.wait_healthy(STARTUP_TIMEOUT_S)
        response = await request
    assert response.status_code == 200, response.text
    ledger = await usage(stack, user.headers)
    assert ledger["reserved_tokens_today"] == 0
    assert ledger["used_tokens_today"] == response.json()["usage"]["total_tokens"]
    # `replacement` keeps serving the package's later tests (stopped with the session).
    assert replacement.proc is not None and replacement.proc.poll() is None

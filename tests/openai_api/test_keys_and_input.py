"""API keys: revocation and deactivation refused at once on both gateways; bad requests get
OpenAI-shaped 400s."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from tests.openai_api.conftest import Stack, create_key

pytestmark = pytest.mark.e2e


async def models_status(stack: Stack, bearer: str) -> tuple[int, int]:
    statuses = []
    for gateway in (stack.gateway_a, stack.gateway_b):
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
            response = await client.get("/v1/models", headers={"Authorization": f"Bearer {bearer}"})
        if response.status_code == 401:
            assert response.json()["error"]["code"] == "invalid_api_key"
        statuses.append(response.status_code)
    return statuses[0], statuses[1]


async def refused_on_both_within(stack: Stack, bearer: str, seconds: float = 1.0) -> float:
    """Poll both gateways until each answers 401; fail unless that happens within `seconds`."""
    started = time.monotonic()
    while await models_status(stack, bearer) != (401, 401):
        elapsed = time.monotonic() - started
        assert elapsed < seconds, f"still accepted after {elapsed:.3f} s"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


async def test_revoked_key_is_refused_on_both_gateways(stack, auth_http, new_api_user):
    user = await new_api_user()
    other = await new_api_user()
    key = await create_key(auth_http, user)
    assert await models_status(stack, key["secret"]) == (200, 200)
    listed = (await auth_http.get("/api-keys", headers=user.headers)).json()
    assert [k["prefix"] for k in listed] == [key["prefix"]]
    assert "secret" not in listed[0] and "secret_hash" not in listed[0]

    # Another user cannot revoke it, nor see it.
    response = await auth_http.delete(f"/api-keys/{key['id']}", headers=other.headers)
    assert response.status_code == 404
    assert (await auth_http.get("/api-keys", headers=other.headers)).json() == []

    response = await auth_http.delete(f"/api-keys/{key['id']}", headers=user.headers)
    assert response.status_code == 204
    # What a gateway kept about the key is dropped when the revocation reaches it.
    await refused_on_both_within(stack, key["secret"])


async def test_deactivated_owner_is_refused_on_both_gateways(
    stack, auth_http, new_api_user, admin_headers
):
    user = await new_api_user()
    key = await create_key(auth_http, user)
    assert await models_status(stack, key["secret"]) == (200, 200)
    listed = await auth_http.get(
        "/admin/api-keys", params={"user_id": user.id}, headers=admin_headers
    )
    assert [k["id"] for k in listed.json()] == [key["id"]]
    response = await auth_http.patch(
        f"/users/{user.id}", json={"is_active": False}, headers=admin_headers
    )
    assert response.status_code == 200, response.text
    await refused_on_both_within(stack, key["secret"])
    await refused_on_both_within(stack, user.access_token)


async def test_a_key_opens_only_the_openai_door(stack, auth_http, new_api_user):
    """A key is no access token: the chat's REST routes refuse it, own data or another's."""
    user = await new_api_user()
    other = await new_api_user()
    key = (await create_key(auth_http, user))["secret"]
    async with httpx.AsyncClient(base_url=stack.gateway_a.url, timeout=30) as client:
        theirs = await client.post("/conversations/", json={}, headers=other.headers)
        assert theirs.status_code == 201, theirs.text
        as_key = {"Authorization": f"Bearer {key}"}
        for path in ("/conversations/", f"/conversations/{theirs.json()['id']}", "/me/usage"):
            response = await client.get(path, headers=as_key)
            assert response.status_code == 401, (path, response.text)


async def test_expired_key_is_refused(stack, auth_http, new_api_user):
    user = await new_api_user()
    response = await auth_http.post(
        "/api-keys",
        json={"name": "old", "expires_at": "2000-01-01T00:00:00Z"},
        headers=user.headers,
    )
    assert response.status_code == 422


BAD_BODIES: list[tuple[str, Any]] = [
    ("unknown field", {"logprobs": True}),
    ("n > 1", {"n": 2}),
    (
        "non-string content part",
        {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
    ),
    ("content of the wrong type", {"messages": [{"role": "user", "content": 5}]}),
    ("huge max_tokens", {"max_tokens": 10**9}),
    ("too many messages", {"messages": [{"role": "user", "content": "x"}] * 300}),
    ("oversized messages", {"messages": [{"role": "user", "content": "x" * 200_000}]}),
    ("no messages", {"messages": []}),
    ("last message not from the user", {"messages": [{"role": "system", "content": "x"}]}),
]


@pytest.mark.parametrize(("case", "change"), BAD_BODIES, ids=[c for c, _ in BAD_BODIES])
async def test_bad_input_is_an_openai_400(stack, auth_http, new_api_user, case, change):
    user = await new_api_user()
    body = {"model": "mock-model", "messages": [{"role": "user", "content": "hi"}], **change}
    async with httpx.AsyncClient(base_url=stack.gateway_a.url, timeout=30) as client:
        response = await client.post("/v1/chat/completions", json=body, headers=user.headers)
    assert response.status_code == 400, (case, response.text)
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]


async def test_malformed_json_is_an_openai_400(stack, new_api_user):
    user = await new_api_user()
    async with httpx.AsyncClient(base_url=stack.gateway_b.url, timeout=30) as client:
        response = await client.post(
            "/v1/chat/completions",
            content=b'{"model": "mock-model", "messages": [',
            headers={**user.headers, "Content-Type": "application/json"},
        )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"

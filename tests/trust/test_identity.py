"""Identity and abuse on the running stack (issue 11, items 11, 12, 16)."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import httpx
import pytest

from tests.gateway.conftest import ALLOWED_ORIGIN, open_socket
from tests.trust.conftest import Stack, admin, client_ip, new_member

pytestmark = pytest.mark.e2e

SUMMARY = "/api/v1/analytics/summary"


async def wait_for(condition: Any, timeout_s: float = 15.0, interval_s: float = 0.1) -> Any:
    """Await `condition()` until it returns something truthy; fail after `timeout_s`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        value = await condition()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(interval_s)


async def test_a_password_typed_as_the_username_never_reaches_analytics(stack: Stack) -> None:
    typed = f"My-Secret-{secrets.token_hex(4)}"
    ip = client_ip()
    boss = await admin(stack)
    async with httpx.AsyncClient(timeout=10) as client:
        refused = await client.post(
            f"{stack.auth.url}/auth/token",
            data={"username": typed, "password": "whatever-1"},
            headers={"X-Forwarded-For": ip},
        )
        assert refused.status_code == 401

        async def recorded() -> list[dict[str, Any]]:
            page = await client.get(
                f"{stack.analytics.url}/api/v1/analytics/users/activities",
                params={"activity_type": "login_failed", "limit": 200},
                headers=boss.headers,
            )
            assert page.status_code == 200, page.text
            return [a for a in page.json()["items"] if a.get("ip") == ip]

        activities = await wait_for(recorded)
    assert typed not in str(activities)
    assert activities[0]["username"] is None


async def test_a_model_outside_the_allow_list_is_refused(stack: Stack) -> None:
    member = await new_member(stack)
    async with httpx.AsyncClient(base_url=stack.gateway.url, timeout=10) as client:
        refused = await client.post(
            "/conversations/", json={"model": "o1-pro-most-expensive"}, headers=member.headers
        )
        assert refused.status_code == 400
        assert "not allowed" in refused.json()["detail"]
        assistant = await client.post(
            "/assistants/",
            json={"name": "a", "model": "o1-pro-most-expensive"},
            headers=member.headers,
        )
        assert assistant.status_code == 400
        allowed = await client.post(
            "/conversations/", json={"model": "gpt-4o-mini"}, headers=member.headers
        )
        assert allowed.status_code == 201
        listed = await client.get("/conversations/", headers=member.headers)
    assert listed.json()["total"] == 1

    socket = await open_socket(stack.gateway, origin=ALLOWED_ORIGIN)
    await socket.request({"type": "auth", "token": member.access_token}, "ready")
    frame = await socket.request(
        {"type": "start_conversation", "model": "o1-pro-most-expensive"}, "error"
    )
    assert frame["code"] == "model_not_allowed"
    await socket.close()


async def test_anonymous_owners_are_counted_apart_from_users(stack: Stack) -> None:
    boss = await admin(stack)
    async with httpx.AsyncClient(base_url=stack.analytics.url, timeout=10) as client:

        async def summary() -> dict[str, Any]:
            response = await client.get(SUMMARY, headers=boss.headers)
            assert response.status_code == 200, response.text
            body: dict[str, Any] = response.json()
            return body

        before = await summary()
        socket = await open_socket(stack.gateway, origin=ALLOWED_ORIGIN)
        await socket.request({"type": "auth", "anonymous": True}, "ready")
        await socket.request({"type": "start_conversation"}, "conversation.started")
        await socket.close()

        # Other tests' events may still be arriving, so wait on the anonymous count itself;
        # that a registered-user count leaves anonymous owners out is proven exactly in
        # tests/analytics_consumer/test_owners.py.
        async def counted() -> dict[str, Any] | None:
            now = await summary()
            return now if now["anonymous_users"] > before["anonymous_users"] else None

        after = await wait_for(counted)
    assert after["anonymous_users"] == before["anonymous_users"] + 1

"""End to end across every service: real accounts from auth chat through the gateway and a
worker, and the analytics dashboard reports exactly what happened."""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from typing import Any

import httpx
import jwt
import pytest

from tests.gateway.conftest import User, expected_reply_text, open_socket
from tests.platform.conftest import ADMIN_PASSWORD, ADMIN_USERNAME, Platform

pytestmark = pytest.mark.e2e

SUMMARY = "/api/v1/analytics/summary"


async def register_and_login(platform: Platform, username: str) -> User:
    password = f"Pw-{secrets.token_hex(6)}1"
    async with httpx.AsyncClient(base_url=platform.auth.url) as client:
        registered = await client.post(
            "/auth/register",
            json={"username": username, "email": f"{username}@example.com", "password": password},
        )
        assert registered.status_code == 201, registered.text
        return await login(platform, username, password)


async def login(platform: Platform, username: str, password: str) -> User:
    async with httpx.AsyncClient(base_url=platform.auth.url) as client:
        token = await client.post("/auth/token", data={"username": username, "password": password})
        assert token.status_code == 200, token.text
        access = token.json()["access_token"]
        me = (await client.get("/auth/me", headers={"Authorization": f"Bearer {access}"})).json()
    return User(me["id"], username, access)


async def chat_over_websocket(platform: Platform, user: User, prompts: list[str]) -> list[dict]:
    """One conversation, one turn per prompt; returns the `reply.completed` frames."""
    socket = await open_socket(platform.gateway, user)
    try:
        started = await socket.request(
            {"type": "start_conversation", "title": "platform"}, "conversation.started"
        )
        completed = []
        for n, prompt in enumerate(prompts):
            await socket.send(
                {
                    "type": "send_message",
                    "conversation_id": started["conversation_id"],
                    "content": prompt,
                    "client_message_id": f"m{n}",
                }
            )
            frame, _ = await socket.recv_until("reply.completed", timeout_s=30)
            assert frame["content"] == expected_reply_text(prompt)
            completed.append(frame)
        return completed
    finally:
        await socket.close()


async def chat_over_http(platform: Platform, user: User, prompt: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=platform.gateway.url, timeout=60) as client:
        conversation = await client.post("/conversations/", json={}, headers=user.headers)
        assert conversation.status_code == 201, conversation.text
        cid = conversation.json()["id"]
        sent = await client.post(
            f"/conversations/{cid}/messages?wait=true",
            json={"content": prompt},
            headers=user.headers,
        )
        assert sent.status_code == 200, sent.text
        body: dict[str, Any] = sent.json()
        return body


async def eventually_json(client: httpx.AsyncClient, path: str, headers, condition, timeout_s=30):
    deadline = time.monotonic() + timeout_s
    while True:
        response = await client.get(path, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        if condition(body):
            return body
        assert time.monotonic() < deadline, f"{path} never satisfied the condition: {body}"
        await asyncio.sleep(0.2)


async def test_chat_turns_are_counted_exactly_by_analytics(platform: Platform):
    alice = await register_and_login(platform, f"alice{secrets.token_hex(3)}")
    bob = await register_and_login(platform, f"bob{secrets.token_hex(3)}")
    admin = await login(platform, ADMIN_USERNAME, ADMIN_PASSWORD)

    alice_replies = await chat_over_websocket(
        platform, alice, [f"first question {uuid.uuid4()}", f"second question {uuid.uuid4()}"]
    )
    bob_reply = await chat_over_http(platform, bob, f"only question {uuid.uuid4()}")

    usages = [f["usage"] for f in alice_replies] + [bob_reply["reply"]]
    prompt_tokens = sum(u["prompt_tokens"] for u in usages)
    completion_tokens = sum(u["completion_tokens"] for u in usages)
    assert completion_tokens > 0 and prompt_tokens > 0

    async with httpx.AsyncClient(base_url=platform.analytics.url, timeout=10) as client:
        summary = await eventually_json(
            client, SUMMARY, admin.headers, lambda s: s["replies_completed"] == 3
        )
        assert summary["user_messages"] == 3
        assert summary["total_conversations"] == 2
        assert summary["prompt_tokens"] == prompt_tokens
        assert summary["completion_tokens"] == completion_tokens
        assert summary["total_tokens"] == prompt_tokens + completion_tokens
        assert summary["total_users"] == 3  # the bootstrap admin, alice, bob
        assert summary["logins"] >= 3

        models = (await client.get("/api/v1/analytics/models", headers=admin.headers)).json()
        assert sum(m["completion_tokens"] for m in models["items"]) == completion_tokens
        assert sum(m["prompt_tokens"] for m in models["items"]) == prompt_tokens

        top = (
            await client.get("/api/v1/analytics/users/top?by=messages", headers=admin.headers)
        ).json()
        assert top["items"][0]["user_id"] == alice.user_id
        assert top["items"][0]["user_messages"] == 2

        # HTTP usage arrives in batches from every service's middleware.
        def routes_seen(page: dict) -> set[tuple[str, str, str]]:
            return {(r["service"], r["method"], r["route"]) for r in page["items"]}

        wanted = {
            ("auth", "POST", "/auth/register"),
            ("auth", "POST", "/auth/token"),
            ("gateway", "POST", "/conversations/{conversation_id}/messages"),
        }
        await eventually_json(
            client,
            "/api/v1/analytics/api-usage?limit=100",
            admin.headers,
            lambda page: wanted <= routes_seen(page),
        )


def _forged_tokens(platform: Platform, user: User) -> dict[str, str]:
    now = int(time.time())
    claims = {
        "sub": user.user_id,
        "username": user.username,
        "roles": ["admin"],
        "iss": "convoai-auth",
        "aud": "convoai",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": str(uuid.uuid4()),
        "typ": "access",
    }
    secret = platform.infra.jwt_secret
    header, payload, _ = jwt.encode(claims, secret, algorithm="HS256").split(".")
    unsigned = jwt.encode(claims, None, algorithm="none")
    return {
        "valid (control)": jwt.encode(claims, secret, algorithm="HS256"),
        "alg none": unsigned,
        "wrong signature": f"{header}.{payload}.{'A' * 43}",
        "expired": jwt.encode(
            {**claims, "exp": now - 60, "iat": now - 120, "nbf": now - 120}, secret
        ),
        "not yet valid": jwt.encode({**claims, "nbf": now + 600}, secret),
        "wrong audience": jwt.encode({**claims, "aud": "someone-else"}, secret),
        "wrong issuer": jwt.encode({**claims, "iss": "evil"}, secret),
        "refresh as access": jwt.encode({**claims, "typ": "refresh"}, secret),
        "other algorithm": jwt.encode(claims, secret, algorithm="HS512"),
        "garbage": "not-a-token",
    }


async def test_gateway_and_analytics_reject_every_forged_token(platform: Platform):
    victim = User("v" * 16, "victim", "")
    protected = [
        (platform.gateway.url, "/conversations/"),
        (platform.gateway.url, "/assistants/"),
        (platform.analytics.url, SUMMARY),
    ]
    for name, token in _forged_tokens(platform, victim).items():
        for base_url, path in protected:
            async with httpx.AsyncClient(base_url=base_url) as client:
                response = await client.get(path, headers={"Authorization": f"Bearer {token}"})
            if name == "valid (control)":
                # The same claims, correctly signed, pass: the rejections below are the forgery's.
                assert response.status_code == 200, (path, response.text)
                continue
            assert response.status_code == 401, (name, path, response.text)
            assert response.headers["www-authenticate"] == "Bearer", (name, path)


async def test_a_user_token_reads_no_analytics(platform: Platform):
    carol = await register_and_login(platform, f"carol{secrets.token_hex(3)}")
    async with httpx.AsyncClient(base_url=platform.analytics.url) as client:
        assert (await client.get(SUMMARY)).status_code == 401
        assert (await client.get(SUMMARY, headers=carol.headers)).status_code == 403

"""The app's files and session over plain HTTP: CSP, the API routes untouched, the refresh
token only in an httpOnly SameSite cookie, the one-origin forwarding to auth and analytics."""

from __future__ import annotations

import httpx
import pytest

from tests.webapp.conftest import ADMIN_PASSWORD, ADMIN_USERNAME, Stack
from tests.webapp.pages import PASSWORD, register, unique

# The first test of the package also waits for the stack to start (STARTUP_TIMEOUT_S).
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(360)]


async def test_the_page_and_its_files_carry_a_csp_without_inline_script(
    http: httpx.AsyncClient,
) -> None:
    for path in ("/", "/static/js/main.js", "/static/vendor/preact.module.js", "/static/app.css"):
        answer = await http.get(path)
        assert answer.status_code == 200, path
        policy = answer.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "unsafe-inline" not in policy, policy
        assert "frame-ancestors 'none'" in policy
        assert answer.headers["x-content-type-options"] == "nosniff"
    page = (await http.get("/")).text
    assert '<script type="module" src="/static/js/main.js">' in page
    assert "<script>" not in page and " on" not in page.split("<body>")[1]


async def test_the_api_keeps_its_routes_and_json_errors(http: httpx.AsyncClient) -> None:
    assert (await http.get("/conversations/")).status_code == 401
    missing = await http.get("/no-such-page")
    assert missing.status_code == 404 and missing.json() == {"detail": "Not Found"}
    assert (await http.get("/health")).json()["status"] == "ok"
    assert (await http.get("/static/../app.py")).status_code == 404


async def test_the_session_cookie_holds_the_refresh_token_and_rotates(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    username = unique("henry")
    await register(stack, username)
    answer = await http.post(
        "/webapp/session",
        data={"username": username, "password": PASSWORD},
        headers={"origin": stack.url},
    )
    assert answer.status_code == 200, answer.text
    assert set(answer.json()) == {"access_token", "token_type", "expires_in"}
    cookie = answer.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/webapp/session" in cookie
    first = http.cookies["convoai_refresh"]

    refreshed = await http.post("/webapp/session/refresh", headers={"origin": stack.url})
    assert refreshed.status_code == 200 and "access_token" in refreshed.json()
    assert http.cookies["convoai_refresh"] != first

    # Another site's page cannot use the cookie, even if a browser sent it.
    foreign = await http.post("/webapp/session/refresh", headers={"origin": "https://evil.example"})
    assert foreign.status_code == 403

    # The rotated-out token is refused (auth revokes the family on reuse).
    async with httpx.AsyncClient(base_url=stack.url, cookies={"convoai_refresh": first}) as thief:
        assert (await thief.post("/webapp/session/refresh")).status_code == 401

    signed_out = await http.delete("/webapp/session", headers={"origin": stack.url})
    assert signed_out.status_code == 204
    assert (await http.post("/webapp/session/refresh")).status_code == 401


async def test_auth_and_analytics_answer_through_the_gateway(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    session = await http.post(
        "/webapp/session", data={"username": ADMIN_USERNAME, "password": ADMIN_PASSWORD}
    )
    headers = {"authorization": f"Bearer {session.json()['access_token']}"}
    me = await http.get("/auth/me", headers=headers)
    assert me.status_code == 200 and me.json()["username"] == ADMIN_USERNAME
    users = await http.get("/users/", params={"q": ADMIN_USERNAME}, headers=headers)
    assert users.status_code == 200 and users.json()["total"] == 1
    # Percent-encoded, so the client sends the dots as they are.
    for sneaky in ("/auth/%2e%2e/health", "/users/%2E%2E/auth/me", "/api/v1/analytics/%2e/summary"):
        refused = await http.get(sneaky, headers=headers)
        assert refused.status_code == 404, (sneaky, refused.status_code)
    summary = await http.get("/api/v1/analytics/summary", headers=headers)
    assert summary.status_code == 200 and "total_users" in summary.json()
    assert (await http.get("/api/v1/analytics/summary")).status_code == 401

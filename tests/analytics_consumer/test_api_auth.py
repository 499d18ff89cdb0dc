"""Who may call the dashboard API, and what it refuses as malformed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import jwt
import pytest

pytestmark = pytest.mark.e2e

READS = [
    "/summary",
    "/users/activities",
    "/users/top",
    "/users/list?active_only=true",
    "/conversations",
    "/api-usage",
    "/daily-stats",
    "/models",
    "/ttft-daily",
    "/api-keys",
]
ACTIVITY = {"activity_type": "manual_note", "user_id": "u-someone", "details": {"note": "hi"}}


def _call(client: httpx.Client, path: str | None) -> int:
    if path is None:
        return client.post("/track/activity", json=ACTIVITY).status_code
    return client.get(path).status_code


@pytest.mark.parametrize("path", [*READS, None], ids=[*READS, "POST /track/activity"])
@pytest.mark.parametrize(
    ("roles", "read_status", "write_status"),
    [
        ((), 401, 401),
        (("user",), 403, 403),
        (("manager",), 200, 403),
        (("admin",), 200, 201),
        (("user", "manager"), 200, 403),
    ],
    ids=["anonymous", "user", "manager", "admin", "user+manager"],
)
def test_authorization_matrix(stack, consumer, path, roles, read_status, write_status):
    with stack.client(consumer, *roles) as client:
        assert _call(client, path) == (write_status if path is None else read_status)


@pytest.mark.parametrize(
    ("roles", "status"),
    [((), 401), (("user",), 200), (("manager",), 200), (("admin",), 200)],
    ids=["anonymous", "user", "manager", "admin"],
)
def test_own_key_usage_is_for_any_signed_in_user(stack, consumer, roles, status):
    with stack.client(consumer, *roles) as client:
        response = client.get("/me/api-keys")
    assert response.status_code == status
    if status == 200:
        assert response.json()["items"] == []  # this caller has no keys


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": datetime.now(UTC) - timedelta(minutes=1)},
        {"aud": "someone-else"},
        {"iss": "not-auth"},
        {"typ": "refresh"},
    ],
    ids=["expired", "wrong-audience", "wrong-issuer", "refresh-token"],
)
def test_bad_tokens_are_unauthorized(stack, consumer, claims):
    token = stack.token("admin", **claims)
    response = httpx.get(
        f"{consumer.url}/api/v1/analytics/summary", headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 401


def test_token_signed_with_another_secret_is_unauthorized(stack, consumer):
    now = datetime.now(UTC)
    forged = jwt.encode(
        {
            "sub": "x",
            "roles": ["admin"],
            "iss": "convoai-auth",
            "aud": "convoai",
            "iat": now,
            "exp": now + timedelta(minutes=5),
            "jti": "j",
            "typ": "access",
        },
        "another-secret-that-is-long-enough-to-be-accepted",
        algorithm="HS256",
    )
    response = httpx.get(
        f"{consumer.url}/api/v1/analytics/summary", headers={"Authorization": f"Bearer {forged}"}
    )
    assert response.status_code == 401


def test_health_is_public(consumer):
    response = httpx.get(f"{consumer.url}/api/v1/analytics/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "consumer_connected": True}


@pytest.mark.parametrize(
    "path",
    [
        "/users/activities?start=2024-13-01",
        "/users/activities?start=yesterday",
        "/conversations?start=2024-05-02&end=2024-05-01",
        "/api-usage?end=2024-02-30",
        "/models?start=2024-05-02&end=2024-05-01",
        "/daily-stats?days=0",
        "/daily-stats?days=367",
        "/daily-stats?end=not-a-date",
        "/daily-stats?end=0001-01-01",
        "/ttft-daily?end=0001-01-05&days=6",
        "/users/top?by=karma",
        "/users/top?limit=0",
        "/users/list?limit=1000",
        "/users/activities?skip=-1",
    ],
)
def test_bad_parameters_are_422(stack, consumer, path):
    with stack.client(consumer, "admin") as client:
        response = client.get(path)
    assert response.status_code == 422, response.text
    assert "detail" in response.json()


@pytest.mark.parametrize(
    "path",
    [
        "/users/activities?start=0001-01-01&end=9999-12-31",
        "/conversations?start=0001-01-01&end=9999-12-31",
        "/models?end=9999-12-31",
        "/api-usage?start=0001-01-01&end=9999-12-31",
        "/daily-stats?end=9999-12-31&days=2",
        "/ttft-daily?end=0001-01-01&days=1",
    ],
)
def test_the_calendars_first_and_last_days_are_answered(stack, consumer, path):
    """Found by the fuzzer: a window at the calendar's edge cost a 500 (date arithmetic)."""
    with stack.client(consumer, "admin") as client:
        response = client.get(path)
    assert response.status_code == 200, response.text


def test_admin_tracks_an_activity_manually(stack, consumer):
    with stack.client(consumer, "admin") as client:
        created = client.post("/track/activity", json={**ACTIVITY, "ip": "192.0.2.1"})
        assert created.status_code == 201
        body = created.json()
        assert (body["source"], body["activity_type"], body["ip"]) == (
            "manual",
            "manual_note",
            "192.0.2.1",
        )
        listed = client.get(
            "/users/activities", params={"user_id": "u-someone", "activity_type": "manual_note"}
        ).json()
    assert body["id"] in {a["id"] for a in listed["items"]}
    assert listed["total"] >= 1


@pytest.mark.parametrize(
    "payload",
    [{}, {"activity_type": ""}, {"activity_type": "Not Valid!"}, {"activity_type": "x" * 33}],
)
def test_malformed_manual_activity_is_422(stack, consumer, payload):
    with stack.client(consumer, "admin") as client:
        assert client.post("/track/activity", json=payload).status_code == 422


def test_lists_paginate_with_bounds(stack, consumer):
    with stack.client(consumer, "manager") as client:
        body = client.get("/daily-stats", params={"days": 10, "skip": 8, "limit": 5}).json()
    assert (body["total"], len(body["items"]), body["skip"], body["limit"]) == (10, 2, 8, 5)

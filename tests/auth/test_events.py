"""Auth events reach the real broker once per action, never after a rollback; logs stay clean."""

from __future__ import annotations

import json
import uuid
from datetime import datetime

import pytest
from sqlalchemy import text

from shared.db import create_engine
from shared.events import parse_event
from tests.auth.conftest import new_ip, unique_name

pytestmark = pytest.mark.e2e

USER_AGENT = "auth-tests/1.0"


def _since(events, start: int, **fields) -> list[dict]:
    return [e for e in events.received[start:] if all(e.get(k) == v for k, v in fields.items())]


def _assert_envelope(event: dict, event_type: str) -> None:
    assert event["type"] == event_type
    assert event["_routing_key"] == event_type
    assert event["_message_id"] == event["event_id"]
    assert event["producer"] == "auth"
    assert event["version"] == 1
    uuid.UUID(event["event_id"])
    datetime.fromisoformat(event["occurred_at"])
    # The published body is a valid catalogue event.
    body = {k: v for k, v in event.items() if not k.startswith("_")}
    assert parse_event(body).type == event_type


async def test_registration_publishes_user_registered_once(client, events, marker):
    start = len(events.received)
    username = unique_name()
    response = await client.post(
        "/users/",
        json={"username": username, "email": f"{username}@example.com", "password": "pa55-Word-9!"},
    )
    assert response.status_code == 201
    user_id = response.json()["id"]

    event = await events.wait_for(type="user.registered", user_id=user_id)
    _assert_envelope(event, "user.registered")
    assert event["username"] == username
    assert event["roles"] == ["user"]
    assert event["ip"] == client.headers["X-Forwarded-For"]
    assert event["user_agent"] == USER_AGENT
    await marker()
    assert len(_since(events, start, type="user.registered", user_id=user_id)) == 1


async def test_rolled_back_registration_publishes_nothing(client, events, marker):
    """The duplicate's event is staged before the insert fails; the rollback takes it away."""
    username = unique_name()
    body = {"username": username, "email": f"{username}@example.com", "password": "pa55-Word-9!"}
    assert (await client.post("/auth/register", json=body)).status_code == 201
    await marker()  # the first registration's own event has arrived before counting starts
    start = len(events.received)
    duplicate = {**body, "username": username.upper(), "email": f"x{body['email']}"}
    assert (await client.post("/auth/register", json=duplicate)).status_code == 409
    await marker()
    assert _since(events, start, type="user.registered") == []


async def test_login_success_and_failures_publish_their_events(client, accounts, events, marker):
    account = await accounts.create(login=False)
    start = len(events.received)

    ok = await client.post(
        "/auth/token", data={"username": account.username, "password": account.password}
    )
    assert ok.status_code == 200
    logged_in = await events.wait_for(type="user.logged_in", user_id=account.id)
    _assert_envelope(logged_in, "user.logged_in")
    assert logged_in["username"] == account.username
    assert logged_in["ip"] == client.headers["X-Forwarded-For"]
    assert logged_in["user_agent"] == USER_AGENT

    wrong = await client.post(
        "/auth/token", data={"username": account.email, "password": "wrong-pass1"}
    )
    assert wrong.status_code == 401
    failed = await events.wait_for(type="user.login_failed", user_id=account.id)
    _assert_envelope(failed, "user.login_failed")
    assert failed["reason"] == "wrong_password"
    # The account's name, not the text typed (here its email).
    assert failed["username_attempted"] == account.username
    assert failed["ip"] == client.headers["X-Forwarded-For"]
    assert failed["user_agent"] == USER_AGENT

    # An unknown name is often a password typed into the wrong field: it is never published.
    nobody = f"Typed-Secret-{unique_name()}"
    nobody_ip = new_ip()
    await client.post(
        "/auth/token",
        data={"username": nobody, "password": "wrong-pass1"},
        headers={"X-Forwarded-For": nobody_ip},
    )
    unknown = await events.wait_for(type="user.login_failed", ip=nobody_ip)
    assert (unknown["reason"], unknown["user_id"]) == ("unknown_user", None)
    assert unknown["username_attempted"] is None
    assert nobody not in json.dumps(unknown)

    await marker()
    assert len(_since(events, start, type="user.logged_in", user_id=account.id)) == 1
    assert len(_since(events, start, type="user.login_failed", user_id=account.id)) == 1
    assert len(_since(events, start, type="user.login_failed", ip=nobody_ip)) == 1


async def test_locked_and_disabled_logins_publish_their_reasons(client, accounts, events):
    locked = await accounts.create(login=False)
    attacker = new_ip()
    for _ in range(6):
        await accounts.login(locked.username, "wrong-pass1", ip=attacker)
    event = await events.wait_for(type="user.login_failed", user_id=locked.id, reason="locked")
    assert event["username_attempted"] == locked.username

    disabled = await accounts.create(login=False)
    admin = await accounts.admin_headers()
    await client.patch(f"/users/{disabled.id}", json={"is_active": False}, headers=admin)
    assert (await accounts.login(disabled.username, disabled.password)).status_code == 403
    await events.wait_for(type="user.login_failed", user_id=disabled.id, reason="inactive")


async def test_logout_publishes_user_logged_out_once(client, accounts, events, marker):
    account = await accounts.create()
    start = len(events.received)
    for _ in range(2):
        response = await client.post("/auth/logout", json={"refresh_token": account.refresh_token})
        assert response.status_code == 204
    event = await events.wait_for(type="user.logged_out", user_id=account.id)
    _assert_envelope(event, "user.logged_out")
    assert event["ip"] == client.headers["X-Forwarded-For"]
    assert event["user_agent"] == USER_AGENT
    await marker()
    assert len(_since(events, start, type="user.logged_out", user_id=account.id)) == 1


async def test_profile_and_password_changes_publish_user_updated(client, accounts, events, marker):
    account = await accounts.create()
    start = len(events.received)
    await client.patch("/auth/me", json={"full_name": "New Name"}, headers=account.headers)
    await client.patch(
        "/auth/me",
        json={"password": "An0ther-pass", "current_password": account.password},
        headers=account.headers,
    )
    await marker()
    updates = _since(events, start, type="user.updated", user_id=account.id)
    assert [u["changed_fields"] for u in updates] == [["full_name"], ["password"]]
    for update in updates:
        _assert_envelope(update, "user.updated")
        assert update["actor_id"] == account.id
        assert (update["roles"], update["is_active"]) == (["user"], True)

    unchanged = await client.patch(
        "/auth/me", json={"full_name": "New Name"}, headers=account.headers
    )
    assert unchanged.status_code == 200
    await marker()
    assert len(_since(events, start, type="user.updated", user_id=account.id)) == 2


async def test_admin_update_and_delete_publish_once_with_the_actor(
    client, accounts, events, marker, sole_admin
):
    account = await accounts.create(login=False)
    start = len(events.received)
    response = await client.patch(
        f"/users/{account.id}",
        json={"roles": ["manager"], "is_active": False, "full_name": "Boss"},
        headers=sole_admin.headers,
    )
    assert response.status_code == 200
    updated = await events.wait_for(type="user.updated", user_id=account.id)
    _assert_envelope(updated, "user.updated")
    assert updated["changed_fields"] == ["full_name", "roles", "is_active"]
    assert (updated["roles"], updated["is_active"]) == (["manager"], False)
    assert updated["actor_id"] == sole_admin.id

    assert (
        await client.delete(f"/users/{account.id}", headers=sole_admin.headers)
    ).status_code == 204
    deleted = await events.wait_for(type="user.deleted", user_id=account.id)
    _assert_envelope(deleted, "user.deleted")
    assert deleted["actor_id"] == sole_admin.id

    await marker()
    assert len(_since(events, start, type="user.updated", user_id=account.id)) == 1
    assert len(_since(events, start, type="user.deleted", user_id=account.id)) == 1


async def test_refused_last_admin_changes_publish_nothing(client, events, marker, sole_admin):
    """The change and its event are written, the invariant check fails, both roll back."""
    start = len(events.received)
    demote = await client.patch(
        f"/users/{sole_admin.id}", json={"roles": ["user"]}, headers=sole_admin.headers
    )
    assert demote.status_code == 409
    delete = await client.delete(f"/users/{sole_admin.id}", headers=sole_admin.headers)
    assert delete.status_code == 409
    await marker()
    assert _since(events, start, user_id=sole_admin.id) == []


async def test_no_password_hash_or_token_reaches_the_log(client, accounts, auth, auth_db):
    account = await accounts.create()
    guess = "Gu3ss-" + unique_name()
    typed_in_the_name_field = "Pa55-" + unique_name()
    await accounts.login(account.username, guess)
    await accounts.login(typed_in_the_name_field, account.password)
    refreshed = await client.post("/auth/refresh", json={"refresh_token": account.refresh_token})
    assert refreshed.status_code == 200
    new_password = "N3w-" + unique_name()
    changed = await client.patch(
        "/auth/me",
        json={"password": new_password, "current_password": account.password},
        headers=account.headers,
    )
    assert changed.status_code == 200
    engine = create_engine(auth_db.url, pool_size=1)
    try:
        async with engine.connect() as conn:
            stored_hash = (
                await conn.execute(
                    text("SELECT password_hash FROM auth.users WHERE id = :id"), {"id": account.id}
                )
            ).scalar_one()
    finally:
        await engine.dispose()

    logs = auth.logs()
    assert account.id in logs, "the service log should mention the account (wrong log file?)"
    secrets_ = {
        "password": account.password,
        "new password": new_password,
        "wrong guess": guess,
        "password typed as username": typed_in_the_name_field,
        "hash": stored_hash,
        "hash digest": stored_hash.rsplit("$", 1)[-1],
        "access token": account.access_token,
        "refresh token": account.refresh_token,
        "rotated access token": refreshed.json()["access_token"],
        "rotated refresh token": refreshed.json()["refresh_token"],
    }
    leaked = [name for name, value in secrets_.items() if value in logs]
    assert not leaked
    assert "$argon2" not in logs

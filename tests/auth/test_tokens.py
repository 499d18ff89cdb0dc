"""Login, token contents, refresh rotation, logout, lockout, rate limits and token attacks.

Over 400 lines on purpose: one module per auth flow would repeat the same account fixtures; these
are the token flows' cases read together.
"""

from __future__ import annotations

import asyncio
import base64
import json
import statistics
import time

import jwt
import pytest
from passlib.hash import argon2
from sqlalchemy import text

from shared.db import create_engine
from shared.security import InvalidToken, TokenVerifier
from tests.auth.conftest import (
    ACCESS_TTL_S,
    LOCKOUT_WINDOW_S,
    REFRESH_GRACE_S,
    new_ip,
    unique_name,
)

pytestmark = pytest.mark.e2e

ISSUER = "convoai-auth"
AUDIENCE = "convoai"
LOCKED_DETAIL = "Too many failed login attempts; try again later"


@pytest.fixture(scope="session")
def verifier(infra) -> TokenVerifier:
    """The verifier gateway and analytics use, configured as they are."""
    return TokenVerifier(infra.jwt_secret, "HS256", ISSUER, AUDIENCE)


async def _stored_hash(auth_db, user_id: str) -> str:
    engine = create_engine(auth_db.url, pool_size=1)
    try:
        async with engine.connect() as conn:
            return (
                await conn.execute(
                    text("SELECT password_hash FROM auth.users WHERE id = :id"), {"id": user_id}
                )
            ).scalar_one()
    finally:
        await engine.dispose()


# --- login --------------------------------------------------------------------------------------


async def test_login_by_username_or_email_returns_tokens(accounts, verifier):
    account = await accounts.create(login=False)
    for identifier in (account.username, account.email.upper()):
        response = await accounts.login(identifier, account.password)
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token"}
        assert body["token_type"] == "bearer"
        assert body["expires_in"] == ACCESS_TTL_S
        principal = verifier.verify_access(body["access_token"])
        assert (principal.user_id, principal.username, principal.roles) == (
            account.id,
            account.username,
            frozenset({"user"}),
        )


async def test_access_token_carries_the_documented_claims(accounts):
    account = await accounts.create()
    header = jwt.get_unverified_header(account.access_token)
    claims = jwt.decode(account.access_token, options={"verify_signature": False})
    assert header["alg"] == "HS256"
    assert set(claims) >= {
        "sub",
        "username",
        "roles",
        "iss",
        "aud",
        "iat",
        "nbf",
        "exp",
        "jti",
        "typ",
    }
    assert claims["typ"] == "access"
    assert (claims["iss"], claims["aud"], claims["sub"]) == (ISSUER, AUDIENCE, account.id)
    # `iat` has a fraction (a revocation voids tokens issued before its instant); `exp` does not.
    assert claims["exp"] - int(claims["iat"]) == ACCESS_TTL_S
    assert claims["nbf"] <= time.time() + 1
    refresh_claims = jwt.decode(account.refresh_token, options={"verify_signature": False})
    assert refresh_claims["typ"] == "refresh"
    assert refresh_claims["jti"] != claims["jti"]


async def test_wrong_password_and_unknown_user_get_the_same_401(accounts):
    account = await accounts.create(login=False)
    wrong = await accounts.login(account.username, "wrong-pass1")
    unknown = await accounts.login(unique_name(), "wrong-pass1")
    for response in (wrong, unknown):
        assert response.status_code == 401
        assert response.json() == {"detail": "Incorrect username or password"}
        assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_login_without_form_fields_is_422(client):
    response = await client.post("/auth/token", data={"username": "someone"})
    assert response.status_code == 422


async def test_unknown_user_costs_about_as_much_as_a_wrong_password(accounts):
    """A fast 401 for unknown names would tell an attacker which names exist."""
    account = await accounts.create(login=False)

    async def timed(identifier: str) -> float:
        started = time.perf_counter()
        response = await accounts.login(identifier, "wrong-pass1")
        assert response.status_code == 401
        return time.perf_counter() - started

    # Four attempts each: below the lockout threshold, so every one verifies a hash.
    known = [await timed(account.username) for _ in range(4)]
    unknown_name = unique_name()
    unknown = [await timed(unknown_name) for _ in range(4)]
    assert statistics.median(unknown) > 0.5 * statistics.median(known), (known, unknown)


async def test_passwords_are_stored_as_argon2id_with_owasp_parameters(accounts, auth_db):
    account = await accounts.create(login=False)
    stored = await _stored_hash(auth_db, account.id)
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert account.password not in stored


async def test_weaker_hash_is_upgraded_at_the_next_login(accounts, auth_db):
    account = await accounts.create(login=False)
    old = argon2.using(type="ID", memory_cost=8192, rounds=1, parallelism=1).hash(account.password)
    engine = create_engine(auth_db.url, pool_size=1)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text("UPDATE auth.users SET password_hash = :h WHERE id = :id"),
                {"h": old, "id": account.id},
            )
    finally:
        await engine.dispose()

    assert (await accounts.login(account.username, account.password)).status_code == 200
    upgraded = await _stored_hash(auth_db, account.id)
    assert upgraded != old
    assert upgraded.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert (await accounts.login(account.username, account.password)).status_code == 200


# --- lockout ------------------------------------------------------------------------------------


async def _poll_login(accounts, identifier: str, password: str, timeout_s: float, ip: str) -> float:
    """Seconds until the login from `ip` succeeds (4 polls a second: under the rate limit)."""
    started = time.monotonic()
    while True:
        response = await accounts.login(identifier, password, ip=ip)
        if response.status_code == 200:
            return time.monotonic() - started
        assert response.status_code == 429, response.text
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"still locked after {timeout_s}s")
        await asyncio.sleep(0.2)


async def test_five_failures_lock_the_account_for_that_address_until_the_window_passes(
    accounts,
):
    account = await accounts.create(login=False)
    attacker = new_ip()
    for _ in range(5):
        assert (await accounts.login(account.username, "wrong-pass1", attacker)).status_code == 401

    locked = await accounts.login(account.username, account.password, attacker)
    assert locked.status_code == 429
    assert locked.json() == {"detail": LOCKED_DETAIL}
    assert 1 <= int(locked.headers["Retry-After"]) <= LOCKOUT_WINDOW_S
    # The lock is on the account, whichever name is used to reach it.
    assert (await accounts.login(account.email, account.password, attacker)).status_code == 429

    waited = await _poll_login(
        accounts, account.username, account.password, LOCKOUT_WINDOW_S + 5, attacker
    )
    assert waited <= LOCKOUT_WINDOW_S + 1


async def test_a_guesser_never_locks_the_owner_out_from_another_address(accounts):
    """Lockout as a weapon (issue 11, item 10): five wrong passwords from anywhere locked even
    the only admin out for the whole window."""
    account = await accounts.create(login=False)
    attacker = new_ip()
    for _ in range(5):
        assert (await accounts.login(account.username, "wrong-pass1", attacker)).status_code == 401
    assert (await accounts.login(account.username, account.password, attacker)).status_code == 429
    assert (await accounts.login(account.username, account.password, new_ip())).status_code == 200


async def test_an_admin_unlocks_an_account_at_once(accounts):
    account = await accounts.create(login=False)
    attacker = new_ip()
    for _ in range(6):
        await accounts.login(account.username, "wrong-pass1", attacker)
    assert (await accounts.login(account.username, account.password, attacker)).status_code == 429
    admin = await accounts.admin_headers()
    own = await accounts.create()
    refused = await accounts.http.post(f"/users/{account.id}/unlock", headers=own.headers)
    assert refused.status_code == 403
    unlocked = await accounts.http.post(f"/users/{account.id}/unlock", headers=admin)
    assert unlocked.status_code == 204
    assert (await accounts.login(account.username, account.password, attacker)).status_code == 200


async def test_attempts_an_attacker_gets_from_one_address_are_bounded(accounts):
    """The brute-force protection, measured: guesses from one address until it is refused."""
    account = await accounts.create(login=False)
    attacker = new_ip()
    guesses = 0
    while (await accounts.login(account.username, "wrong-pass1", attacker)).status_code == 401:
        guesses += 1
        assert guesses <= 5
    assert guesses == 5
    # With the production window (15 min): 5 guesses per 15 minutes = 20 per hour and address.


async def test_a_successful_login_resets_the_failure_count(accounts):
    account = await accounts.create(login=False)
    ip = new_ip()
    for _ in range(4):
        assert (await accounts.login(account.username, "wrong-pass1", ip)).status_code == 401
    assert (await accounts.login(account.username, account.password, ip)).status_code == 200
    for _ in range(4):
        assert (await accounts.login(account.username, "wrong-pass1", ip)).status_code == 401
    assert (await accounts.login(account.username, account.password, ip)).status_code == 200


async def test_unknown_names_lock_exactly_like_accounts(accounts):
    account = await accounts.create(login=False)
    unknown = unique_name()
    answers = {}
    ip = new_ip()
    for name in (account.username, unknown):
        for _ in range(5):
            assert (await accounts.login(name, "wrong-pass1", ip)).status_code == 401
        answers[name] = await accounts.login(name, "wrong-pass1", ip)
    for response in answers.values():
        assert response.status_code == 429
        assert response.json() == {"detail": LOCKED_DETAIL}
        assert 1 <= int(response.headers["Retry-After"]) <= LOCKOUT_WINDOW_S


# --- per-address rate limits --------------------------------------------------------------------


async def test_registration_is_rate_limited_per_address(client, accounts):
    ip = new_ip()
    statuses = []
    for _ in range(11):
        username = unique_name()
        response = await client.post(
            "/auth/register",
            json={
                "username": username,
                "email": f"{username}@example.com",
                "password": "pa55-Word-9!",
            },
            headers={"X-Forwarded-For": ip},
        )
        statuses.append(response.status_code)
    assert statuses == [201] * 10 + [429]
    assert response.json() == {"detail": "Too many requests from this address; try again later"}
    assert int(response.headers["Retry-After"]) >= 1
    other = unique_name()
    elsewhere = await client.post(
        "/auth/register",
        json={"username": other, "email": f"{other}@example.com", "password": "pa55-Word-9!"},
        headers={"X-Forwarded-For": new_ip()},
    )
    assert elsewhere.status_code == 201


async def test_login_is_rate_limited_per_address(client):
    ip = new_ip()
    statuses = []
    # 20 per minute, refilling continuously: on a slow machine a slot may free up meanwhile.
    while 429 not in statuses and len(statuses) < 30:
        response = await client.post(
            "/auth/token",
            data={"username": unique_name(), "password": "wrong-pass1"},
            headers={"X-Forwarded-For": ip},
        )
        statuses.append(response.status_code)
    assert statuses[:20] == [401] * 20
    assert statuses[-1] == 429
    assert response.json() == {"detail": "Too many requests from this address; try again later"}
    assert int(response.headers["Retry-After"]) >= 1
    other = await client.post(
        "/auth/token",
        data={"username": unique_name(), "password": "wrong-pass1"},
        headers={"X-Forwarded-For": new_ip()},
    )
    assert other.status_code == 401


# --- refresh rotation and logout ----------------------------------------------------------------


async def test_refresh_rotates_and_reuse_revokes_the_family(client, accounts):
    account = await accounts.create()
    other_session = await accounts.tokens(account.username, account.password)

    rotated = await client.post("/auth/refresh", json={"refresh_token": account.refresh_token})
    assert rotated.status_code == 200, rotated.text
    pair = rotated.json()
    assert pair["refresh_token"] != account.refresh_token
    assert pair["expires_in"] == ACCESS_TTL_S
    me = await client.get("/auth/me", headers={"Authorization": f"Bearer {pair['access_token']}"})
    assert me.status_code == 200

    await asyncio.sleep(REFRESH_GRACE_S + 0.1)  # past the window for concurrent refreshes
    reused = await client.post("/auth/refresh", json={"refresh_token": account.refresh_token})
    assert reused.status_code == 401
    assert reused.json() == {"detail": "Refresh token reuse detected; the session has been revoked"}
    # The legitimate holder's newer token dies with the family ...
    after = await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert after.status_code == 401
    assert after.json() == {"detail": "Invalid or expired refresh token"}
    # ... while another session of the same user lives on.
    untouched = await client.post(
        "/auth/refresh", json={"refresh_token": other_session["refresh_token"]}
    )
    assert untouched.status_code == 200


async def test_tabs_refreshing_at_once_all_stay_logged_in(client, accounts):
    """Ten parallel refreshes of one token (ten tabs) logged the user out (issue 11, item 14);
    within the grace window each gets a pair, and a replay after it still revokes the family."""
    account = await accounts.create()
    answers = await asyncio.gather(
        *(
            client.post("/auth/refresh", json={"refresh_token": account.refresh_token})
            for _ in range(10)
        )
    )
    assert [a.status_code for a in answers] == [200] * 10, [a.text for a in answers]
    newest = answers[-1].json()["refresh_token"]
    await asyncio.sleep(REFRESH_GRACE_S + 0.1)  # past the window
    replay = await client.post("/auth/refresh", json={"refresh_token": account.refresh_token})
    assert replay.status_code == 401
    revoked = await client.post("/auth/refresh", json={"refresh_token": newest})
    assert revoked.status_code == 401


async def test_logout_revokes_the_session(client, accounts):
    account = await accounts.create()
    response = await client.post("/auth/logout", json={"refresh_token": account.refresh_token})
    assert response.status_code == 204
    refreshed = await client.post("/auth/refresh", json={"refresh_token": account.refresh_token})
    assert refreshed.status_code == 401
    again = await client.post("/auth/logout", json={"refresh_token": account.refresh_token})
    assert again.status_code == 204
    for bad in ("garbage", account.access_token):
        response = await client.post("/auth/logout", json={"refresh_token": bad})
        assert response.status_code == 401
        assert response.json() == {"detail": "Invalid refresh token"}
    assert (await client.post("/auth/logout", json={})).status_code == 422


async def test_refresh_refuses_access_tokens_garbage_and_deleted_users(client, accounts):
    account = await accounts.create()
    for bad in (account.access_token, "garbage", "a.b.c"):
        response = await client.post("/auth/refresh", json={"refresh_token": bad})
        assert response.status_code == 401
    admin = await accounts.admin_headers()
    assert (await client.delete(f"/users/{account.id}", headers=admin)).status_code == 204
    deleted = await client.post("/auth/refresh", json={"refresh_token": account.refresh_token})
    assert deleted.status_code == 401
    assert (await client.post("/auth/refresh", json={})).status_code == 422


# --- token attack matrix ------------------------------------------------------------------------


def _b64(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _attacks(valid_access: str, refresh: str, secret: str) -> dict[str, str]:
    claims = jwt.decode(valid_access, options={"verify_signature": False})
    now = int(time.time())

    def signed(alg: str = "HS256", key: str = secret, **changes: object) -> str:
        forged = {**claims, **changes}
        for name, value in changes.items():
            if value is None:
                del forged[name]
        return jwt.encode(forged, key, algorithm=alg)

    return {
        "alg none": f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}.",
        "alg none, uppercase": f"{_b64({'alg': 'NONE', 'typ': 'JWT'})}.{_b64(claims)}.",
        "wrong signature": signed(key="another-secret-that-is-long-enough-32b"),
        "tampered roles": valid_access.split(".")[0]
        + "."
        + _b64({**claims, "roles": ["admin"]})
        + "."
        + valid_access.split(".")[2],
        "expired": signed(iat=now - 3600, nbf=now - 3600, exp=now - 60),
        "not yet valid": signed(iat=now, nbf=now + 600, exp=now + 1200),
        "wrong audience": signed(aud="someone-else"),
        "wrong issuer": signed(iss="evil-issuer"),
        "refresh token as access token": refresh,
        "wrong token type": signed(typ="id"),
        "no type": signed(typ=None),
        "no expiry": signed(exp=None),
        "no subject": signed(sub=None),
        "no token id": signed(jti=None),
        "roles not a list": signed(roles="admin"),
        "other algorithm than pinned (HS512)": signed(alg="HS512"),
        "garbage": "garbage",
        "three garbage parts": "a.b.c",
        "empty payload": "eyJhbGciOiJIUzI1NiJ9.e30.",
        "oversized": "x" * 5000,
    }


async def test_token_attack_matrix_is_rejected_by_auth_and_the_shared_verifier(
    client, accounts, infra, verifier
):
    account = await accounts.create()
    valid = await client.get("/auth/me", headers=account.headers)
    assert valid.status_code == 200
    verifier.verify_access(account.access_token)

    attacks = _attacks(account.access_token, account.refresh_token, infra.jwt_secret)
    failures = []
    for name, token in attacks.items():
        with pytest.raises(InvalidToken):
            verifier.verify_access(token)
        response = await client.get("/auth/me", headers={"Authorization": f"Bearer {token}"})
        if (
            response.status_code != 401
            or response.headers.get("WWW-Authenticate") != "Bearer"
            or "detail" not in response.json()
        ):
            failures.append((name, response.status_code, response.text))
    assert not failures


async def test_refreshed_access_token_carries_the_current_roles(client, accounts, verifier):
    account = await accounts.create()
    admin = await accounts.admin_headers()
    promoted = await client.patch(
        f"/users/{account.id}", json={"roles": ["manager"]}, headers=admin
    )
    assert promoted.status_code == 200
    assert verifier.verify_access(account.access_token).roles == frozenset({"user"})
    refreshed = await client.post("/auth/refresh", json={"refresh_token": account.refresh_token})
    assert refreshed.status_code == 200
    assert verifier.verify_access(refreshed.json()["access_token"]).roles == frozenset({"manager"})

"""Registration, the caller's own account, and the admin user API with its role checks."""

from __future__ import annotations

import pytest

from tests.auth.conftest import new_ip, unique_name

pytestmark = pytest.mark.e2e


def _registration(**overrides: str) -> dict[str, str]:
    username = unique_name()
    body = {"username": username, "email": f"{username}@example.com", "password": "s3cret-Pass"}
    body.update(overrides)
    return body


# --- registration -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/auth/register", "/users/"])
async def test_register_creates_a_user_account(client, path):
    body = _registration(full_name="Ada Lovelace", email=f"{unique_name()}@Example.COM")
    response = await client.post(path, json=body)
    assert response.status_code == 201, response.text
    user = response.json()
    assert len(user["id"]) == 16
    assert user["username"] == body["username"]
    assert user["email"].lower() == body["email"].lower()
    assert user["full_name"] == "Ada Lovelace"
    assert user["roles"] == ["user"]
    assert user["is_active"] is True
    assert "password" not in response.text and "hash" not in response.text


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"username": "ab"}, "at least 3"),
        ({"username": "x" * 33}, "at most 32"),
        ({"username": "has space"}, "pattern"),
        ({"username": "emoji😀"}, "pattern"),
        ({"email": "not-an-email"}, "email"),
        ({"password": "short1"}, "8 to 128"),
        ({"password": "a1" * 65}, "128"),
        ({"password": "onlyletters"}, "letter and one digit"),
        ({"password": "1234567890"}, "letter and one digit"),
        ({"password": "password1"}, "too easy to guess: This is a very common password"),
        ({"password": "Password123"}, "too easy to guess"),
    ],
)
async def test_register_rejects_invalid_input_with_422(client, overrides, message):
    response = await client.post("/auth/register", json=_registration(**overrides))
    assert response.status_code == 422, response.text
    assert message in response.text


async def test_register_rejects_a_password_equal_to_the_username_or_email(client):
    username = unique_name("same1")
    same_as_name = _registration(username=username, password=username.upper())
    response = await client.post("/auth/register", json=same_as_name)
    assert response.status_code == 422
    assert "same as the username or email" in response.text

    email = f"{unique_name('a1')}@example.com"
    response = await client.post("/auth/register", json=_registration(email=email, password=email))
    assert response.status_code == 422
    assert "same as the username or email" in response.text


async def test_register_rejects_unknown_fields(client):
    response = await client.post("/auth/register", json=_registration(roles="admin"))
    assert response.status_code == 422


async def test_duplicate_username_or_email_is_409_naming_the_field(client):
    first = _registration()
    assert (await client.post("/auth/register", json=first)).status_code == 201

    same_name = _registration(username=first["username"].upper())
    response = await client.post("/users/", json=same_name)
    assert response.status_code == 409
    assert response.json() == {"detail": "username already registered"}

    same_email = _registration(email=first["email"].upper())
    response = await client.post("/auth/register", json=same_email)
    assert response.status_code == 409
    assert response.json() == {"detail": "email already registered"}


# --- the caller's own account -----------------------------------------------------------------


async def test_me_returns_the_callers_account(client, accounts):
    account = await accounts.create()
    response = await client.get("/auth/me", headers=account.headers)
    assert response.status_code == 200
    me = response.json()
    assert (me["id"], me["username"], me["roles"]) == (account.id, account.username, ["user"])
    assert me["last_login_at"] is not None


@pytest.mark.parametrize("method", ["GET", "PATCH"])
async def test_me_without_token_is_401_with_bearer_challenge(client, method):
    response = await client.request(method, "/auth/me", json={"full_name": "x"})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json() == {"detail": "Not authenticated"}


async def test_patch_me_changes_full_name(client, accounts):
    account = await accounts.create()
    response = await client.patch("/auth/me", json={"full_name": "Grace"}, headers=account.headers)
    assert response.status_code == 200
    assert response.json()["full_name"] == "Grace"
    assert (await client.get("/auth/me", headers=account.headers)).json()["full_name"] == "Grace"


async def test_password_change_needs_the_current_password_and_ends_other_sessions(client, accounts):
    account = await accounts.create()
    new_password = "N3w-password"

    missing = await client.patch(
        "/auth/me", json={"password": new_password}, headers=account.headers
    )
    assert missing.status_code == 422
    assert "current_password is required" in missing.text

    wrong = await client.patch(
        "/auth/me",
        json={"password": new_password, "current_password": "wrong-1234"},
        headers=account.headers,
    )
    assert wrong.status_code == 400
    assert wrong.json() == {"detail": "Current password is incorrect"}

    weak = await client.patch(
        "/auth/me",
        json={"password": "no-digits-here", "current_password": account.password},
        headers=account.headers,
    )
    assert weak.status_code == 422

    as_username = await client.patch(
        "/auth/me",
        json={"password": account.username + "", "current_password": account.password},
        headers=account.headers,
    )
    assert as_username.status_code == 422
    assert "same as the username" in as_username.text

    changed = await client.patch(
        "/auth/me",
        json={"password": new_password, "current_password": account.password},
        headers=account.headers,
    )
    assert changed.status_code == 200, changed.text

    refreshed = await client.post("/auth/refresh", json={"refresh_token": account.refresh_token})
    assert refreshed.status_code == 401
    assert (await accounts.login(account.username, account.password)).status_code == 401
    assert (await accounts.login(account.username, new_password)).status_code == 200


async def test_guessing_the_current_password_locks_the_account(client, accounts):
    """A stolen access token must not allow guessing the password at full speed."""
    account = await accounts.create()
    for _ in range(5):
        wrong = await client.patch(
            "/auth/me",
            json={"password": "N3w-password", "current_password": "guess-1234"},
            headers=account.headers,
        )
        assert wrong.status_code == 400
    locked = await client.patch(
        "/auth/me",
        json={"password": "N3w-password", "current_password": account.password},
        headers=account.headers,
    )
    assert locked.status_code == 429
    assert int(locked.headers["Retry-After"]) >= 1
    # The guesser holds a token, not the owner's address: the owner still logs in.
    assert (await accounts.login(account.username, account.password)).status_code == 200


async def test_deleted_users_token_no_longer_opens_me(client, accounts):
    account = await accounts.create()
    admin = await accounts.admin_headers()
    assert (await client.delete(f"/users/{account.id}", headers=admin)).status_code == 204
    response = await client.get("/auth/me", headers=account.headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


# --- administration ---------------------------------------------------------------------------


async def test_admin_lists_users_with_search_filters_and_total(client, accounts):
    admin = await accounts.admin_headers()
    tag = unique_name("grp")
    made = []
    for _ in range(3):
        username = f"{tag}_{unique_name('')}"
        response = await client.post(
            "/auth/register",
            json={
                "username": username,
                "email": f"{username}@example.com",
                "password": "pa55-Word-9!",
            },
            headers={"X-Forwarded-For": new_ip()},
        )
        assert response.status_code == 201, response.text
        made.append(response.json())
    await client.patch(f"/users/{made[0]['id']}", json={"roles": ["manager"]}, headers=admin)
    await client.patch(f"/users/{made[1]['id']}", json={"is_active": False}, headers=admin)

    everyone = await client.get("/users/", params={"q": tag}, headers=admin)
    assert everyone.status_code == 200
    page = everyone.json()
    assert page["total"] == 3
    assert [u["id"] for u in page["items"]] == [u["id"] for u in made]

    first_two = (await client.get("/users/", params={"q": tag, "limit": 2}, headers=admin)).json()
    rest = (await client.get("/users/", params={"q": tag, "skip": 2}, headers=admin)).json()
    assert (first_two["total"], len(first_two["items"]), first_two["limit"]) == (3, 2, 2)
    assert [u["id"] for u in first_two["items"] + rest["items"]] == [u["id"] for u in made]

    managers = (
        await client.get("/users/", params={"q": tag, "role": "manager"}, headers=admin)
    ).json()
    assert [u["id"] for u in managers["items"]] == [made[0]["id"]]
    inactive = (
        await client.get("/users/", params={"q": tag, "is_active": "false"}, headers=admin)
    ).json()
    assert [u["id"] for u in inactive["items"]] == [made[1]["id"]]

    by_email = (
        await client.get("/users/", params={"q": made[2]["email"].upper()}, headers=admin)
    ).json()
    assert [u["id"] for u in by_email["items"]] == [made[2]["id"]]
    wildcard = (await client.get("/users/", params={"q": "%"}, headers=admin)).json()
    assert wildcard["total"] == 0


@pytest.mark.parametrize(
    "params", [{"limit": 0}, {"limit": 101}, {"skip": -1}, {"role": "root"}, {"is_active": "maybe"}]
)
async def test_list_users_rejects_out_of_bounds_parameters(client, accounts, params):
    response = await client.get("/users/", params=params, headers=await accounts.admin_headers())
    assert response.status_code == 422


async def test_admin_reads_updates_and_deletes_a_user(client, accounts):
    admin = await accounts.admin_headers()
    account = await accounts.create()

    read = await client.get(f"/users/{account.id}", headers=admin)
    assert read.status_code == 200
    assert read.json()["username"] == account.username

    updated = await client.patch(
        f"/users/{account.id}",
        json={"full_name": "Renamed", "roles": ["manager", "user"], "is_active": False},
        headers=admin,
    )
    assert updated.status_code == 200
    body = updated.json()
    assert (body["full_name"], sorted(body["roles"]), body["is_active"]) == (
        "Renamed",
        ["manager", "user"],
        False,
    )
    # Deactivated: no login (the password is right, so saying why leaks nothing), no refresh.
    login = await accounts.login(account.username, account.password)
    assert login.status_code == 403
    assert login.json() == {"detail": "Account is disabled"}
    refresh = await client.post("/auth/refresh", json={"refresh_token": account.refresh_token})
    assert refresh.status_code == 401

    assert (await client.delete(f"/users/{account.id}", headers=admin)).status_code == 204
    assert (await client.get(f"/users/{account.id}", headers=admin)).status_code == 404
    gone = await client.delete(f"/users/{account.id}", headers=admin)
    assert gone.status_code == 404
    assert gone.json() == {"detail": "User not found"}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/users/AAAAAAAAAAAAAAAA", None),
        ("GET", "/users/short", None),
        ("PATCH", "/users/AAAAAAAAAAAAAAAA", {"full_name": "x"}),
        ("DELETE", "/users/AAAAAAAAAAAAAAAA", None),
    ],
)
async def test_unknown_user_is_404(client, accounts, method, path, body):
    response = await client.request(method, path, json=body, headers=await accounts.admin_headers())
    assert response.status_code == 404
    assert response.json() == {"detail": "User not found"}


@pytest.mark.parametrize("body", [{"roles": []}, {"roles": ["root"]}, {"password": "x"}])
async def test_admin_update_rejects_invalid_changes(client, accounts, body):
    account = await accounts.create(login=False)
    response = await client.patch(
        f"/users/{account.id}", json=body, headers=await accounts.admin_headers()
    )
    assert response.status_code == 422


# --- authorization matrix ---------------------------------------------------------------------

ADMIN_ENDPOINTS = [
    ("GET", "/users/", None, False),
    ("GET", "/users/{id}", None, False),
    ("PATCH", "/users/{id}", {"full_name": "Changed"}, True),
    ("DELETE", "/users/{id}", None, True),
]


@pytest.mark.parametrize(("method", "path", "body", "writes"), ADMIN_ENDPOINTS)
@pytest.mark.parametrize("caller", ["anonymous", "user", "manager", "admin"])
async def test_authorization_matrix(client, accounts, caller, method, path, body, writes):
    target = await accounts.create(login=False)
    if caller == "anonymous":
        headers = {}
        expected = 401
    elif caller == "admin":
        headers = await accounts.admin_headers()
        expected = 204 if method == "DELETE" else 200
    else:
        headers = (await accounts.create(caller)).headers
        expected = 403 if caller == "user" or writes else 200

    response = await client.request(method, path.format(id=target.id), json=body, headers=headers)
    assert response.status_code == expected, response.text
    if expected == 401:
        assert response.headers["WWW-Authenticate"] == "Bearer"
    if expected == 403:
        assert response.json() == {"detail": "Insufficient role"}
    still_there = await client.get(f"/users/{target.id}", headers=await accounts.admin_headers())
    changed = still_there.status_code == 404 or still_there.json()["full_name"] == "Changed"
    assert changed == (writes and expected != 403 and expected != 401)


async def test_demoted_admin_loses_admin_rights_at_once(client, accounts):
    """Auth checks roles in its database, not in a still-valid token."""
    second = await accounts.create("admin")
    victim = await accounts.create(login=False)
    admin = await accounts.admin_headers()
    assert (
        await client.patch(f"/users/{second.id}", json={"roles": ["user"]}, headers=admin)
    ).status_code == 200
    response = await client.delete(f"/users/{victim.id}", headers=second.headers)
    assert response.status_code == 403


# --- the last admin ---------------------------------------------------------------------------


async def test_the_last_admin_cannot_be_demoted_deactivated_or_deleted(
    client, accounts, sole_admin, first_admin
):
    me = {"id": sole_admin.id}
    admin = sole_admin.headers
    for method, body in (
        ("PATCH", {"roles": ["user"]}),
        ("PATCH", {"is_active": False}),
        ("PATCH", {"roles": ["manager"], "full_name": "x"}),
        ("DELETE", None),
    ):
        response = await client.request(method, f"/users/{me['id']}", json=body, headers=admin)
        assert response.status_code == 409, (method, body, response.text)
        assert response.json() == {
            "detail": "The last active admin cannot be removed, demoted or deactivated"
        }
    unchanged = (await client.get(f"/users/{me['id']}", headers=admin)).json()
    assert (unchanged["roles"], unchanged["is_active"], unchanged["full_name"]) == (
        ["admin"],
        True,
        None,
    )

    # With a second admin, the first may step down; the second cannot then remove itself.
    second = await accounts.create("admin")
    demoted = await client.patch(
        f"/users/{me['id']}", json={"roles": ["user"]}, headers=second.headers
    )
    assert demoted.status_code == 200
    self_delete = await client.delete(f"/users/{second.id}", headers=second.headers)
    assert self_delete.status_code == 409
    restored = await client.patch(
        f"/users/{me['id']}", json={"roles": ["admin"]}, headers=second.headers
    )
    assert restored.status_code == 200
    assert first_admin.username == restored.json()["username"]

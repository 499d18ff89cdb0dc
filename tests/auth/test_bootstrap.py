"""The first admin: from CONVOAI_ADMIN_* at start-up, and from `convoai create-admin`."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import pytest

from services.auth.app import build_accounts
from services.auth.bootstrap import (
    EXIT_USAGE,
    AdminBootstrapError,
    create_admin_command,
    ensure_first_admin,
)
from services.auth.models import outbox as outbox_table
from services.auth.settings import AuthSettings
from shared.outbox import Outbox
from shared.runtime import ServiceRuntime
from tests.auth.conftest import unique_name

pytestmark = pytest.mark.e2e


async def test_first_admin_comes_from_the_environment(client, accounts, first_admin):
    tokens = await accounts.tokens(first_admin.email, first_admin.password)
    me = await client.get("/auth/me", headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert me.status_code == 200
    assert (me.json()["username"], me.json()["roles"]) == (first_admin.username, ["admin"])


def _settings(infra, auth_db, **admin: str) -> AuthSettings:
    return AuthSettings(
        database_url=auth_db.url,
        amqp_url=infra.amqp_url,
        namespace=infra.namespace,
        jwt_secret=infra.jwt_secret,
        environment="test",
        **admin,
    )


@pytest.fixture
async def runtime(infra, auth_db) -> AsyncIterator[ServiceRuntime]:
    runtime = ServiceRuntime.build("auth", _settings(infra, auth_db), db_pool_size=1)
    await runtime.start()
    yield runtime
    await runtime.stop()


async def test_environment_admin_is_not_created_when_an_admin_exists(
    runtime, infra, auth_db, accounts, auth
):
    username = unique_name("late")
    settings = _settings(
        infra,
        auth_db,
        admin_username=username,
        admin_email=f"{username}@example.com",
        admin_password="L4te-admin-pw",
    )
    outbox = Outbox(outbox_table, runtime.sessions, runtime.publisher)
    assert await ensure_first_admin(build_accounts(settings, outbox), settings) is None
    assert (await accounts.login(username, "L4te-admin-pw")).status_code == 401


@pytest.mark.parametrize(
    ("admin", "message"),
    [
        ({"admin_username": "halfway"}, "must be set together"),
        (
            {
                "admin_username": "ok_name",
                "admin_email": "ok@example.com",
                "admin_password": "weak",
            },
            "password must be 8 to 128",
        ),
    ],
)
async def test_misconfigured_environment_admin_refuses_to_start(
    runtime, infra, auth_db, admin, message
):
    settings = _settings(infra, auth_db, **admin)
    outbox = Outbox(outbox_table, runtime.sessions, runtime.publisher)
    with pytest.raises(AdminBootstrapError, match=message):
        await ensure_first_admin(build_accounts(settings, outbox), settings)


async def _create_admin(env: dict[str, str], *args: str, stdin: str = "") -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        "create-admin",
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin.encode()), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_create_admin_command(auth_cli_env, accounts, events):
    username = unique_name("cli")
    password = "Cl1-" + unique_name()
    code, out, err = await _create_admin(
        auth_cli_env,
        "--username",
        username,
        "--email",
        f"{username}@example.com",
        "--password-stdin",
        stdin=password + "\n",
    )
    assert code == 0, err
    assert out.startswith(f"admin created: {username} (id ")
    assert password not in out + err
    tokens = await accounts.tokens(username, password)
    claims_roles = (
        await accounts.http.get(
            "/auth/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}
        )
    ).json()["roles"]
    assert claims_roles == ["admin"]
    registered = await events.wait_for(type="user.registered", username=username)
    assert registered["roles"] == ["admin"]

    # From the environment alone; the same name again is refused with a clear message.
    env = {
        **auth_cli_env,
        "CONVOAI_ADMIN_USERNAME": username.upper(),
        "CONVOAI_ADMIN_EMAIL": f"other-{username}@example.com",
        "CONVOAI_ADMIN_PASSWORD": password,
    }
    code, _, err = await _create_admin(env)
    assert code == 1
    assert "cannot create admin: username already registered" in err


def test_create_admin_says_what_is_missing(monkeypatch, capsys):
    for name in ("CONVOAI_ADMIN_USERNAME", "CONVOAI_ADMIN_EMAIL", "CONVOAI_ADMIN_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    assert create_admin_command("someone", None, None, password_stdin=False) == EXIT_USAGE
    assert "missing email, password" in capsys.readouterr().err

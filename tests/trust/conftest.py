"""A stack of real processes for the trust-boundary tests (issue 11): auth, two gateways and
analytics, on a database and broker namespace of their own (the revocation tests deactivate and
delete accounts; analytics counts what happens here). No chat worker: nothing here needs a
model's reply. The processes start side by side, then each is waited for."""

from __future__ import annotations

import dataclasses
import json
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from services.registry import MIGRATED_SCHEMAS
from shared.broker import delete_topology
from shared.migrations import upgrade_to_head
from shared.topology import Topology
from tests.gateway.conftest import ALLOWED_ORIGIN
from tests.infra import TestInfrastructure, create_database, drop_database, new_run_id
from tests.processes import ServiceProcess

STARTUP_TIMEOUT_S = 90.0
"""Four processes starting at once on a busy two-core machine."""

ADMIN_USERNAME = "trustadmin"
ADMIN_PASSWORD = f"Tr-{secrets.token_hex(8)}-9"
GATEWAY_ENV = {
    "CONVOAI_ALLOWED_ORIGINS": json.dumps([ALLOWED_ORIGIN]),
    "CONVOAI_ALLOW_ANONYMOUS": "true",
    "CONVOAI_MAX_SOCKETS_PER_USER": "5",
    "CONVOAI_MAX_ANONYMOUS_SOCKETS_PER_ADDRESS": "3",
    # No chat worker runs here: a `?wait=true` answers 202 after 2 s instead of holding the
    # fuzzer's request past its timeout.
    "CONVOAI_WAIT_REPLY_TIMEOUT_S": "2",
}


@dataclass
class Stack:
    infra: TestInfrastructure
    auth: ServiceProcess
    gateway: ServiceProcess
    gateway_b: ServiceProcess
    analytics: ServiceProcess

    @property
    def http_services(self) -> list[ServiceProcess]:
        return [self.auth, self.gateway, self.analytics]


@pytest.fixture(scope="package")
async def stack(_server_urls: tuple[str, str], infra: TestInfrastructure) -> AsyncIterator[Stack]:
    server_url, _ = _server_urls
    db_name = f"convoai_test_{new_run_id()}_trust"
    own = dataclasses.replace(
        infra,
        database_url=await create_database(server_url, db_name),
        namespace=f"{infra.namespace}tr",
        jwt_secret=secrets.token_urlsafe(48),
    )
    await upgrade_to_head(own.database_url, MIGRATED_SCHEMAS)
    processes: list[ServiceProcess] = []

    def start(service: str, instance_id: str | None = None, **env: str) -> ServiceProcess:
        process = ServiceProcess(
            service, own.env(**env), instance_id=instance_id or f"tr-{service}"
        )
        processes.append(process)
        return process.start(wait=False)

    try:
        auth = start(
            "auth",
            CONVOAI_ADMIN_USERNAME=ADMIN_USERNAME,
            CONVOAI_ADMIN_EMAIL="admin@trust.example",
            CONVOAI_ADMIN_PASSWORD=ADMIN_PASSWORD,
        )
        stack = Stack(
            infra=own,
            auth=auth,
            analytics=start("analytics_consumer"),
            gateway=start("gateway", "tr-gw-a", **GATEWAY_ENV, CONVOAI_AUTH_URL=auth.url),
            gateway_b=start("gateway", "tr-gw-b", **GATEWAY_ENV, CONVOAI_AUTH_URL=auth.url),
        )
        for process in processes:
            process.wait_healthy(STARTUP_TIMEOUT_S)
        yield stack
    finally:
        for process in reversed(processes):
            process.stop()
        await delete_topology(own.amqp_url, Topology(own.namespace))
        await drop_database(server_url, db_name)


def client_ip() -> str:
    """A fresh client address (the test processes trust 127.0.0.1's X-Forwarded-For)."""
    return f"10.{secrets.randbelow(256)}.{secrets.randbelow(256)}.{secrets.randbelow(254) + 1}"


@dataclass
class Member:
    id: str
    username: str
    password: str
    access_token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


async def log_in(stack: Stack, username: str, password: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=stack.auth.url, timeout=10) as client:
        response = await client.post(
            "/auth/token",
            data={"username": username, "password": password},
            headers={"X-Forwarded-For": client_ip()},
        )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def admin(stack: Stack) -> Member:
    tokens = await log_in(stack, ADMIN_USERNAME, ADMIN_PASSWORD)
    async with httpx.AsyncClient(base_url=stack.auth.url, timeout=10) as client:
        me = await client.get(
            "/auth/me", headers={"Authorization": f"Bearer {tokens['access_token']}"}
        )
    return Member(
        me.json()["id"],
        ADMIN_USERNAME,
        ADMIN_PASSWORD,
        tokens["access_token"],
        tokens["refresh_token"],
    )


async def new_member(stack: Stack, *roles: str) -> Member:
    """A registered, logged-in account; an admin grants `roles` when given."""
    username = f"m{secrets.token_hex(6)}"
    password = f"Qz-{secrets.token_hex(6)}-7"
    async with httpx.AsyncClient(base_url=stack.auth.url, timeout=10) as client:
        registered = await client.post(
            "/auth/register",
            json={"username": username, "email": f"{username}@example.com", "password": password},
            headers={"X-Forwarded-For": client_ip()},
        )
        assert registered.status_code == 201, registered.text
        user_id = registered.json()["id"]
        if roles:
            boss = await admin(stack)
            promoted = await client.patch(
                f"/users/{user_id}", json={"roles": list(roles)}, headers=boss.headers
            )
            assert promoted.status_code == 200, promoted.text
    tokens = await log_in(stack, username, password)
    return Member(user_id, username, password, tokens["access_token"], tokens["refresh_token"])

"""One real auth process for every auth test, on its own database, plus an event tap on the broker.

The auth tests get a database of their own (same server, same broker namespace as the session):
the first-admin and last-admin rules depend on which admins exist, so no other test module may
add any. Every test makes its own accounts with unique names, and every client speaks from its
own address (X-Forwarded-For; uvicorn trusts it in these processes), so rate limits and lockouts
of one test never touch another.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import httpx
import pytest

from services.registry import MIGRATED_SCHEMAS
from shared.migrations import upgrade_to_head
from tests.infra import TestInfrastructure, create_database, drop_database, new_run_id
from tests.processes import ServiceProcess

LOCKOUT_WINDOW_S = 3
"""Short, so a test can watch a lock expire; the threshold stays at the production 5."""
ACCESS_TTL_S = 900
REFRESH_GRACE_S = 3.0
"""A rotated refresh token used again within this is a concurrent refresh, later reuse (long
enough for ten serialised refreshes on a busy machine)."""


@dataclass(frozen=True)
class AuthDatabase:
    url: str


@pytest.fixture(scope="session")
async def auth_db(
    _server_urls: tuple[str, str], infra: TestInfrastructure
) -> AsyncIterator[AuthDatabase]:
    server_url, _ = _server_urls
    name = f"convoai_test_{new_run_id()}_auth"
    url = await create_database(server_url, name)
    await upgrade_to_head(url, MIGRATED_SCHEMAS)
    yield AuthDatabase(url)
    await drop_database(server_url, name)


@dataclass(frozen=True)
class AdminLogin:
    username: str
    email: str
    password: str


@pytest.fixture(scope="session")
def first_admin() -> AdminLogin:
    suffix = secrets.token_hex(4)
    return AdminLogin(
        f"root_{suffix}", f"root_{suffix}@example.com", f"Adm1n-{secrets.token_hex(8)}"
    )


@pytest.fixture(scope="session")
def auth_env(auth_db: AuthDatabase) -> dict[str, str]:
    """Environment overrides every auth process of these tests uses."""
    return {
        "CONVOAI_DATABASE_URL": auth_db.url,
        "CONVOAI_LOGIN_LOCKOUT_WINDOW_S": str(LOCKOUT_WINDOW_S),
        "CONVOAI_ACCESS_TOKEN_TTL_S": str(ACCESS_TTL_S),
        "CONVOAI_REFRESH_REUSE_GRACE_S": str(REFRESH_GRACE_S),
    }


@pytest.fixture(scope="session")
def auth(
    start_service: Callable[..., ServiceProcess], auth_env: dict[str, str], first_admin: AdminLogin
) -> ServiceProcess:
    return start_service(
        "auth",
        instance_id="auth-under-test",
        CONVOAI_ADMIN_USERNAME=first_admin.username,
        CONVOAI_ADMIN_EMAIL=first_admin.email,
        CONVOAI_ADMIN_PASSWORD=first_admin.password,
        **auth_env,
    )


def new_ip() -> str:
    return f"10.{secrets.randbelow(256)}.{secrets.randbelow(256)}.{secrets.randbelow(254) + 1}"


def unique_name(prefix: str = "u") -> str:
    return f"{prefix}{secrets.token_hex(6)}"


@pytest.fixture
async def client(auth: ServiceProcess) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client speaking from its own address."""
    async with httpx.AsyncClient(
        base_url=auth.url,
        headers={"X-Forwarded-For": new_ip(), "User-Agent": "auth-tests/1.0"},
        timeout=10,
    ) as c:
        yield c


@dataclass
class Account:
    id: str
    username: str
    email: str
    password: str
    roles: list[str]
    access_token: str = ""
    refresh_token: str = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


@dataclass
class Accounts:
    """Creates accounts through the public API (admin promotes when a role is asked for)."""

    http: httpx.AsyncClient
    admin: AdminLogin

    async def _post_from_new_ip(
        self, path: str, ip: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        return await self.http.post(path, headers={"X-Forwarded-For": ip or new_ip()}, **kwargs)

    async def login(self, identifier: str, password: str, ip: str | None = None) -> httpx.Response:
        """From `ip`, or from a new address each time (then no lockout ever applies)."""
        return await self._post_from_new_ip(
            "/auth/token", ip, data={"username": identifier, "password": password}
        )

    async def tokens(self, identifier: str, password: str) -> dict[str, Any]:
        response = await self.login(identifier, password)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def admin_headers(self) -> dict[str, str]:
        tokens = await self.tokens(self.admin.username, self.admin.password)
        return {"Authorization": f"Bearer {tokens['access_token']}"}

    async def create(self, *roles: str, login: bool = True) -> Account:
        username = unique_name()
        password = f"Pw{secrets.token_hex(6)}9"
        response = await self._post_from_new_ip(
            "/auth/register",
            json={"username": username, "email": f"{username}@example.com", "password": password},
        )
        assert response.status_code == 201, response.text
        body = response.json()
        account = Account(body["id"], username, body["email"], password, body["roles"])
        if roles and list(roles) != ["user"]:
            promoted = await self.http.patch(
                f"/users/{account.id}",
                json={"roles": list(roles)},
                headers=await self.admin_headers(),
            )
            assert promoted.status_code == 200, promoted.text
            account.roles = promoted.json()["roles"]
        if login:
            tokens = await self.tokens(username, password)
            account.access_token = tokens["access_token"]
            account.refresh_token = tokens["refresh_token"]
        return account


@pytest.fixture
async def accounts(auth: ServiceProcess, first_admin: AdminLogin) -> AsyncIterator[Accounts]:
    async with httpx.AsyncClient(base_url=auth.url, timeout=10) as http:
        yield Accounts(http, first_admin)


@dataclass
class EventTap:
    """Every `user.*` event the broker routes, as received (body + AMQP properties)."""

    received: list[dict[str, Any]] = field(default_factory=list)
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def on_message(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        async with message.process():
            body = json.loads(message.body)
            body["_routing_key"] = message.routing_key
            body["_message_id"] = message.message_id
            async with self._arrived:
                self.received.append(body)
                self._arrived.notify_all()

    def matching(self, **fields: Any) -> list[dict[str, Any]]:
        return [e for e in self.received if all(e.get(k) == v for k, v in fields.items())]

    async def wait_for(self, timeout_s: float = 10.0, **fields: Any) -> dict[str, Any]:
        async def _first() -> dict[str, Any]:
            async with self._arrived:
                while not (found := self.matching(**fields)):
                    await self._arrived.wait()
                return found[0]

        try:
            return await asyncio.wait_for(_first(), timeout_s)
        except TimeoutError:
            raise AssertionError(f"no event with {fields} within {timeout_s}s") from None


@pytest.fixture(scope="session")
async def events(auth: ServiceProcess, infra: TestInfrastructure) -> AsyncIterator[EventTap]:
    """A temporary queue bound to `<namespace>.events` for `user.#`, consumed in the background."""
    connection = await aio_pika.connect(infra.amqp_url)
    tap = EventTap()
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(f"{infra.namespace}.events")
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key="user.#")
        await queue.consume(tap.on_message)
        yield tap


@pytest.fixture
def marker(client: httpx.AsyncClient, events: EventTap) -> Callable[[], Any]:
    """Returns a coroutine function: publish a `user.login_failed` for a unique name and wait.

    Events leave the service before its HTTP answer (published right after commit), on one
    connection, in order; so once the marker arrives, anything an earlier request published has
    arrived too. That is how a test shows an event was sent once, or never, without sleeping.
    """

    async def _marker() -> None:
        ip = new_ip()
        response = await client.post(
            "/auth/token",
            data={"username": unique_name("marker"), "password": "whatever1"},
            headers={"X-Forwarded-For": ip},
        )
        assert response.status_code == 401
        await events.wait_for(type="user.login_failed", ip=ip)

    return _marker


@pytest.fixture(scope="session")
def auth_cli_env(infra: TestInfrastructure, auth_env: dict[str, str]) -> Iterator[dict[str, str]]:
    yield infra.env(**auth_env)


@dataclass(frozen=True)
class SoleAdmin:
    id: str
    headers: dict[str, str]


@pytest.fixture
async def sole_admin(accounts: Accounts) -> SoleAdmin:
    """The first admin, after deactivating every other admin earlier tests made."""
    headers = await accounts.admin_headers()
    me = (await accounts.http.get("/auth/me", headers=headers)).json()
    listed = await accounts.http.get(
        "/users/", params={"role": "admin", "is_active": "true", "limit": 100}, headers=headers
    )
    for other in listed.json()["items"]:
        if other["id"] != me["id"]:
            response = await accounts.http.patch(
                f"/users/{other['id']}", json={"is_active": False}, headers=headers
            )
            assert response.status_code == 200, response.text
    return SoleAdmin(me["id"], headers)

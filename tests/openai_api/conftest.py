"""The OpenAI-compatible API through real processes: auth, two gateways, a chat worker and
mock_llm, on a database and broker namespace of their own (the first admin is made here)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from services.registry import MIGRATED_SCHEMAS
from shared.broker import delete_topology
from shared.migrations import upgrade_to_head
from shared.topology import Topology
from tests.infra import TestInfrastructure, create_database, drop_database, new_run_id
from tests.processes import ServiceProcess

STARTUP_TIMEOUT_S = 120.0
ADMIN_PASSWORD = f"Adm1n-{secrets.token_hex(8)}"


@dataclass(frozen=True)
class Stack:
    auth: ServiceProcess
    gateway_a: ServiceProcess
    gateway_b: ServiceProcess
    worker: ServiceProcess
    mock_llm: ServiceProcess
    admin_username: str
    database_url: str
    namespace: str


@pytest.fixture(scope="package")
async def api_db(_server_urls: tuple[str, str]) -> AsyncIterator[str]:
    server_url, _ = _server_urls
    name = f"convoai_test_{new_run_id()}_oai"
    url = await create_database(server_url, name)
    await upgrade_to_head(url, MIGRATED_SCHEMAS)
    yield url
    await drop_database(server_url, name)


@pytest.fixture(scope="package")
def stack(
    api_db: str, infra: TestInfrastructure, start_service: Callable[..., ServiceProcess]
) -> Iterator[Stack]:
    namespace = f"{infra.namespace}oai"
    common = {"CONVOAI_DATABASE_URL": api_db, "CONVOAI_NAMESPACE": namespace}
    admin = f"root_{secrets.token_hex(4)}"
    mock = start_service("mock_llm", instance_id="mock-llm-oai", wait=False)
    auth = start_service(
        "auth",
        instance_id="auth-oai",
        wait=False,
        CONVOAI_ADMIN_USERNAME=admin,
        CONVOAI_ADMIN_EMAIL=f"{admin}@example.com",
        CONVOAI_ADMIN_PASSWORD=ADMIN_PASSWORD,
        CONVOAI_REGISTER_RATE_LIMIT="1000",
        CONVOAI_LOGIN_RATE_LIMIT="1000",
        **common,
    )
    gateway_env = {
        "CONVOAI_ALLOWED_MODELS": '["gpt-4o-mini","mock-model"]',
        "CONVOAI_AUTH_URL": auth.url,
        **common,
    }
    gateway_a = start_service("gateway", instance_id="gw-oai-a", wait=False, **gateway_env)
    gateway_b = start_service("gateway", instance_id="gw-oai-b", wait=False, **gateway_env)
    worker = start_service(
        "chat_worker",
        instance_id="worker-oai",
        wait=False,
        CONVOAI_LLM_BASE_URL=f"{mock.url}/v1",
        CONVOAI_LLM_RETRY_BASE_S="0.1",
        **common,
    )
    # Five processes start at once; on a machine shared by many test runs that takes a while.
    for process in (mock, auth, gateway_a, gateway_b, worker):
        process.wait_healthy(STARTUP_TIMEOUT_S)
    yield Stack(auth, gateway_a, gateway_b, worker, mock, admin, api_db, namespace)
    import asyncio

    asyncio.run(delete_topology(infra.amqp_url, Topology(namespace)))


@dataclass
class ApiUser:
    id: str
    username: str
    access_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


async def _login(client: httpx.AsyncClient, username: str, password: str) -> str:
    response = await client.post("/auth/token", data={"username": username, "password": password})
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


@pytest.fixture
async def auth_http(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.auth.url, timeout=30) as client:
        yield client


@pytest.fixture
def new_api_user(auth_http: httpx.AsyncClient) -> Callable[[], Any]:
    async def _new() -> ApiUser:
        username = f"u{secrets.token_hex(6)}"
        password = f"Pw{secrets.token_hex(6)}9"
        response = await auth_http.post(
            "/auth/register",
            json={"username": username, "email": f"{username}@example.com", "password": password},
        )
        assert response.status_code == 201, response.text
        return ApiUser(response.json()["id"], username, await _login(auth_http, username, password))

    return _new


@pytest.fixture
async def admin_headers(stack: Stack, auth_http: httpx.AsyncClient) -> dict[str, str]:
    token = await _login(auth_http, stack.admin_username, ADMIN_PASSWORD)
    return {"Authorization": f"Bearer {token}"}


async def create_key(auth_http: httpx.AsyncClient, user: ApiUser, **body: Any) -> dict[str, Any]:
    response = await auth_http.post(
        "/api-keys", json={"name": "test", **body}, headers=user.headers
    )
    assert response.status_code == 201, response.text
    key: dict[str, Any] = response.json()
    return key


async def set_limits(stack: Stack, admin: dict[str, str], user_id: str, **limits: Any) -> None:
    async with httpx.AsyncClient(base_url=stack.gateway_a.url, timeout=30) as client:
        response = await client.put(f"/admin/budgets/{user_id}", json=limits, headers=admin)
    assert response.status_code == 200, response.text


async def usage(stack: Stack, headers: dict[str, str]) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=stack.gateway_b.url, timeout=30) as client:
        response = await client.get("/me/usage", headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def sdk(stack: Stack, api_key: str, gateway: str = "a") -> openai.AsyncOpenAI:
    process = stack.gateway_a if gateway == "a" else stack.gateway_b
    return openai.AsyncOpenAI(base_url=f"{process.url}/v1", api_key=api_key, max_retries=0)

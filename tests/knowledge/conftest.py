"""Knowledge tests: a gateway, a chat worker, a knowledge worker and mock_llm in this package's
own broker namespace, and helpers to upload files and wait for them to be indexed."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import pytest

from shared.broker import delete_topology
from shared.db import asyncpg_dsn
from shared.ids import IdKind, new_id
from shared.topology import Topology
from tests.gateway.conftest import User, mint_token
from tests.infra import TestInfrastructure
from tests.processes import ServiceProcess

PROCESS_TIMEOUT_S = 60.0
KNOWLEDGE_ENV = {
    "CONVOAI_KNOWLEDGE_CHUNK_CHARS": "1000",
    "CONVOAI_KNOWLEDGE_CHUNK_OVERLAP_CHARS": "150",
    "CONVOAI_KNOWLEDGE_EXTRACTION_TIMEOUT_S": "30",
    "CONVOAI_KNOWLEDGE_EXTRACTION_MEMORY_MIB": "512",
}


@pytest.fixture(scope="package")
def knowledge_env() -> dict[str, str]:
    return dict(KNOWLEDGE_ENV)


@pytest.fixture(scope="package")
def kn_infra(infra: TestInfrastructure) -> TestInfrastructure:
    return dataclasses.replace(infra, namespace=f"{infra.namespace}kn")


@pytest.fixture(scope="package")
async def start_service(
    kn_infra: TestInfrastructure, start_service: Callable[..., ServiceProcess]
) -> AsyncIterator[Callable[..., ServiceProcess]]:
    started: list[ServiceProcess] = []

    def _start(service: str, **kwargs: Any) -> ServiceProcess:
        process = start_service(service, CONVOAI_NAMESPACE=kn_infra.namespace, **kwargs)
        started.append(process)
        return process

    yield _start
    for process in reversed(started):
        process.stop()
    await delete_topology(kn_infra.amqp_url, Topology(kn_infra.namespace))


@pytest.fixture(scope="package")
def mock_llm(start_service: Callable[..., ServiceProcess]) -> ServiceProcess:
    return start_service("mock_llm", instance_id="mock-llm-kn")


@pytest.fixture(scope="package")
def gateway(start_service: Callable[..., ServiceProcess]) -> ServiceProcess:
    return start_service("gateway", instance_id="gw-kn")


@pytest.fixture(scope="package")
def chat_worker(
    start_service: Callable[..., ServiceProcess], mock_llm: ServiceProcess
) -> ServiceProcess:
    return start_service(
        "chat_worker",
        instance_id="worker-kn",
        CONVOAI_LLM_BASE_URL=f"{mock_llm.url}/v1",
        CONVOAI_LLM_RETRY_BASE_S="0.1",
    )


@pytest.fixture(scope="package")
def knowledge_workers() -> list[ServiceProcess]:
    """Every knowledge worker started; `knowledge_worker` is the first that is still alive."""
    return []


@pytest.fixture(scope="package")
def start_knowledge_worker(
    start_service: Callable[..., ServiceProcess],
    mock_llm: ServiceProcess,
    knowledge_workers: list[ServiceProcess],
) -> Callable[..., ServiceProcess]:
    def _start(**env: str) -> ServiceProcess:
        process = start_service(
            "knowledge_worker",
            instance_id=f"kw-{secrets.token_hex(3)}",
            CONVOAI_LLM_BASE_URL=f"{mock_llm.url}/v1",
            **{**KNOWLEDGE_ENV, **env},
        )
        knowledge_workers.append(process)
        return process

    return _start


@pytest.fixture(scope="package")
def knowledge_worker(start_knowledge_worker: Callable[..., ServiceProcess]) -> ServiceProcess:
    return start_knowledge_worker()


@pytest.fixture(scope="package")
def stack(
    gateway: ServiceProcess, chat_worker: ServiceProcess, knowledge_worker: ServiceProcess
) -> ServiceProcess:
    """The whole path is running; returns the gateway."""
    return gateway


@pytest.fixture
def new_user(infra: TestInfrastructure) -> Callable[[], User]:
    def _new() -> User:
        user_id = new_id(IdKind.USER)
        username = f"u{secrets.token_hex(4)}"
        return User(user_id, username, mint_token(infra, user_id, username))

    return _new


@pytest.fixture
async def http(stack: ServiceProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.url, timeout=60) as client:
        yield client


@pytest.fixture
async def db(infra: TestInfrastructure) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(asyncpg_dsn(infra.database_url))
    yield connection
    await connection.close()


async def create_assistant(http: httpx.AsyncClient, user: User, name: str = "Docs") -> str:
    response = await http.post(
        "/assistants/", json={"name": name, "system_prompt": "You answer."}, headers=user.headers
    )
    assert response.status_code == 201, response.text
    assistant_id: str = response.json()["id"]
    return assistant_id


async def upload(
    http: httpx.AsyncClient, user: User, assistant_id: str, name: str, data: bytes
) -> httpx.Response:
    return await http.post(
        f"/assistants/{assistant_id}/files",
        files={"file": (name, data, "application/octet-stream")},
        headers=user.headers,
    )


async def uploaded(
    http: httpx.AsyncClient, user: User, assistant_id: str, name: str, data: bytes
) -> dict[str, Any]:
    response = await upload(http, user, assistant_id, name, data)
    assert response.status_code == 201, response.text
    file: dict[str, Any] = response.json()
    assert file["status"] == "uploaded"
    return file


async def settled(
    http: httpx.AsyncClient,
    user: User,
    assistant_id: str,
    file_id: str,
    timeout_s: float = PROCESS_TIMEOUT_S,
) -> dict[str, Any]:
    """The file once it is `processed` or `failed`."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = await http.get(
            f"/assistants/{assistant_id}/files/{file_id}", headers=user.headers
        )
        assert response.status_code == 200, response.text
        file: dict[str, Any] = response.json()
        if file["status"] != "uploaded":
            return file
        if time.monotonic() > deadline:
            raise TimeoutError(f"file {file_id} still {file['status']} after {timeout_s}s")
        await asyncio.sleep(0.1)


async def ask(
    http: httpx.AsyncClient, user: User, conversation_id: str, question: str
) -> dict[str, Any]:
    """Send `question` and wait for the finished reply; the reply as the REST history has it."""
    response = await http.post(
        f"/conversations/{conversation_id}/messages",
        params={"wait": "true"},
        json={"content": question},
        headers=user.headers,
    )
    assert response.status_code == 200, response.text
    reply_id = response.json()["reply"]["id"]
    history = await http.get(
        f"/conversations/{conversation_id}/messages", params={"limit": 100}, headers=user.headers
    )
    assert history.status_code == 200, history.text
    (reply,) = [m for m in history.json()["items"] if m["id"] == reply_id]
    assert reply["status"] == "complete", reply
    return reply


async def prompt_for(mock: ServiceProcess, question: str) -> list[dict[str, Any]]:
    """The messages mock_llm received for the chat request whose last message is `question`."""
    async with httpx.AsyncClient(base_url=mock.url) as client:
        recorded = (await client.get("/_requests")).json()["requests"]
    matches = [
        r["messages"]
        for r in recorded
        if r["kind"] == "chat" and r["messages"][-1]["content"] == question
    ]
    assert matches, f"mock_llm never received {question!r}"
    messages: list[dict[str, Any]] = matches[-1]
    return messages


def knowledge_in(messages: list[dict[str, Any]]) -> str | None:
    """The file excerpts of a prompt (the second system message), if it has any."""
    systems = [m["content"] for m in messages if m["role"] == "system"]
    return systems[1] if len(systems) > 1 else None

"""The model allow-list through real processes (issue 11, item 12): read from the model
server's `GET /v1/models` (the settings' list while it cannot be reached, refreshed), narrowed
per role; refused alike over REST, the WebSocket and the OpenAI-compatible API, and listed only
as far as the caller may use it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.gateway.conftest import open_socket
from tests.openai_api.conftest import Stack
from tests.processes import ServiceProcess, free_port

pytestmark = pytest.mark.e2e

SERVED = ["served-cheap", "served-pricey"]


@pytest.fixture(scope="module")
def model_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def served_gateway(
    stack: Stack, start_service: Callable[..., ServiceProcess], model_port: int
) -> Iterator[ServiceProcess]:
    """A gateway whose allow-list is the model server's, which is not running yet."""
    process = start_service(
        "gateway",
        instance_id="gw-oai-models",
        CONVOAI_DATABASE_URL=stack.database_url,
        CONVOAI_NAMESPACE=stack.namespace,
        CONVOAI_MODELS_SOURCE="server",
        CONVOAI_LLM_BASE_URL=f"http://127.0.0.1:{model_port}/v1",
        CONVOAI_MODELS_REFRESH_S="0.3",
        CONVOAI_ALLOWED_MODELS='["fallback-model"]',
        CONVOAI_ROLE_MODELS='{"user": ["served-cheap"]}',
    )
    yield process
    process.stop()


async def listed(gateway: ServiceProcess, headers: dict[str, str]) -> list[str]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        response = await client.get("/v1/models", headers=headers)
    assert response.status_code == 200, response.text
    return [m["id"] for m in response.json()["data"]]


async def post(gateway: ServiceProcess, path: str, body: Any, headers: dict[str, str]):
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        return await client.post(path, json=body, headers=headers)


async def test_models_come_from_the_model_server_per_role(
    served_gateway, infra, model_port, new_api_user, admin_headers
):
    member = await new_api_user()
    # The model server is down: the settings' list stands in; the user's role names none of it.
    assert await listed(served_gateway, admin_headers) == ["fallback-model"]
    assert await listed(served_gateway, member.headers) == []

    mock = ServiceProcess(
        "mock_llm",
        infra.env(CONVOAI_MOCK_LLM_MODELS=json.dumps(SERVED)),
        port=model_port,
        instance_id="mock-llm-models",
    )
    mock.start()
    try:
        deadline = time.monotonic() + 20
        while await listed(served_gateway, admin_headers) != SERVED:
            assert time.monotonic() < deadline, "the model server's list was never read"
            await asyncio.sleep(0.1)
        assert await listed(served_gateway, member.headers) == ["served-cheap"]

        # REST: 400 model_not_allowed, and nothing created.
        refused = await post(
            served_gateway, "/conversations/", {"model": "served-pricey"}, member.headers
        )
        assert refused.status_code == 400
        assert refused.json()["code"] == "model_not_allowed"
        assert "served-pricey" in refused.json()["detail"]
        assistant = await post(
            served_gateway, "/assistants/", {"name": "a", "model": "served-pricey"}, member.headers
        )
        assert (assistant.status_code, assistant.json()["code"]) == (400, "model_not_allowed")
        ok = await post(
            served_gateway, "/conversations/", {"model": "served-cheap"}, member.headers
        )
        assert ok.status_code == 201, ok.text
        boss = await post(
            served_gateway, "/conversations/", {"model": "served-pricey"}, admin_headers
        )
        assert boss.status_code == 201, boss.text
        gone = await post(
            served_gateway, "/conversations/", {"model": "fallback-model"}, admin_headers
        )
        assert gone.status_code == 400  # the server's list replaced the settings'

        # WebSocket: an error frame, and nothing created.
        socket = await open_socket(served_gateway)
        await socket.request({"type": "auth", "token": member.access_token}, "ready")
        frame = await socket.request(
            {"type": "start_conversation", "model": "served-pricey"}, "error"
        )
        assert frame["code"] == "model_not_allowed"
        await socket.close()
        async with httpx.AsyncClient(base_url=served_gateway.url, timeout=10) as client:
            mine = await client.get("/conversations/", headers=member.headers)
        assert mine.json()["total"] == 1

        # OpenAI API: 404 model_not_found, as for a model that does not exist.
        completion = await post(
            served_gateway,
            "/v1/chat/completions",
            {"model": "served-pricey", "messages": [{"role": "user", "content": "hi"}]},
            member.headers,
        )
        assert completion.status_code == 404
        assert completion.json()["error"]["code"] == "model_not_found"
    finally:
        mock.stop()

"""A misconfigured model endpoint is named at start, on /ready and to the client: a closed port,
a base URL without /v1 and a wrong key each get their own log line and `reply.failed` code,
and a retried model call tells the client at once (`reply.retrying`)."""

from __future__ import annotations

import json
import secrets
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest
from websockets.sync.client import connect

from shared.ids import IdKind, new_id
from tests.processes import ServiceProcess, free_port, wait_until

pytestmark = pytest.mark.e2e

MOCK_KEY = "mock-key-for-tests"
FAST_RETRIES = {
    "CONVOAI_LLM_MAX_RETRIES": "2",
    "CONVOAI_LLM_RETRY_BASE_S": "0.05",
    "CONVOAI_LLM_RETRY_MAX_S": "0.1",
}


@pytest.fixture(scope="module")
def namespace(infra) -> Iterator[str]:
    import asyncio

    from shared.broker import delete_topology
    from shared.topology import Topology

    name = f"{infra.namespace}me"
    yield name
    asyncio.run(delete_topology(infra.amqp_url, Topology(name)))


@pytest.fixture(scope="module")
def mock_llm(infra) -> Iterator[ServiceProcess]:
    process = ServiceProcess("mock_llm", infra.env(CONVOAI_MOCK_LLM_API_KEY=MOCK_KEY)).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def gateway(infra, namespace) -> Iterator[ServiceProcess]:
    process = ServiceProcess("gateway", infra.env(CONVOAI_NAMESPACE=namespace)).start()
    yield process
    process.stop()


def _worker(infra, namespace: str, **env: str) -> ServiceProcess:
    return ServiceProcess(
        "chat_worker", infra.env(CONVOAI_NAMESPACE=namespace, **FAST_RETRIES, **env)
    ).start()


def _token(infra) -> str:
    now = int(time.time())
    claims = {
        "sub": new_id(IdKind.USER),
        "username": f"u{secrets.token_hex(4)}",
        "roles": ["user"],
        "iss": "convoai-auth",
        "aud": "convoai",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": str(uuid.uuid4()),
        "typ": "access",
    }
    return jwt.encode(claims, infra.jwt_secret, algorithm="HS256")


def _one_turn(infra, gateway: ServiceProcess) -> list[dict[str, Any]]:
    """Send one message; every frame of its reply up to the terminal one."""
    with connect(f"{gateway.ws_url}/ws") as ws:
        ws.send(json.dumps({"type": "auth", "token": _token(infra)}))
        frames: list[dict[str, Any]] = []

        def until(kind: str) -> dict[str, Any]:
            while True:
                frame = json.loads(ws.recv(timeout=30))
                frames.append(frame)
                if frame["type"] in (kind, "error", "reply.completed", "reply.failed"):
                    return frame

        until("ready")
        ws.send(json.dumps({"type": "start_conversation", "title": "model endpoint"}))
        conversation_id = until("conversation.started")["conversation_id"]
        ws.send(
            json.dumps(
                {
                    "type": "send_message",
                    "conversation_id": conversation_id,
                    "content": "hello",
                    "client_message_id": "m1",
                }
            )
        )
        until("reply.completed")
        return frames


def _ready_model_check(worker: ServiceProcess) -> str:
    response = httpx.get(f"{worker.url}/ready", timeout=10)
    check: str = response.json()["checks"]["model"]
    assert (response.status_code == 200) == (check == "ok"), response.text
    return check


def test_closed_port_is_named_retried_visibly_then_failed(infra, namespace, gateway):
    url = f"http://127.0.0.1:{free_port()}/v1"
    worker = _worker(infra, namespace, CONVOAI_LLM_BASE_URL=url)
    try:
        wait_until(lambda: f"model endpoint unreachable at {url}" in worker.logs(), 10)
        assert url in _ready_model_check(worker)
        frames = _one_turn(infra, gateway)
    finally:
        worker.stop()
    retrying = [f for f in frames if f["type"] == "reply.retrying"]
    assert [(f["retry"], f["max_retries"], f["error"]["code"]) for f in retrying] == [
        (1, 2, "model_unreachable"),
        (2, 2, "model_unreachable"),
    ]
    assert all(f["retry_in_s"] >= 0 for f in retrying)
    failed = frames[-1]
    assert failed["type"] == "reply.failed"
    assert failed["error"] == {
        "code": "model_unreachable",
        "message": "The model service is unreachable.",
    }
    assert f"url={url}" in worker.logs() or f'"url": "{url}"' in worker.logs()


def test_base_url_without_v1_is_reported_as_such(infra, namespace, gateway, mock_llm):
    worker = _worker(
        infra, namespace, CONVOAI_LLM_BASE_URL=mock_llm.url, CONVOAI_LLM_API_KEY=MOCK_KEY
    )
    try:
        hint = f"missing its /v1; try CONVOAI_LLM_BASE_URL={mock_llm.url}/v1"
        wait_until(lambda: hint in worker.logs(), 10)
        assert "missing its /v1" in _ready_model_check(worker)
        frames = _one_turn(infra, gateway)
    finally:
        worker.stop()
    assert frames[-1]["type"] == "reply.failed"
    assert frames[-1]["error"]["code"] == "model_endpoint_not_found"
    assert not [f for f in frames if f["type"] == "reply.retrying"]  # not worth retrying


def test_wrong_key_is_reported_as_such(infra, namespace, gateway, mock_llm):
    worker = _worker(
        infra, namespace, CONVOAI_LLM_BASE_URL=f"{mock_llm.url}/v1", CONVOAI_LLM_API_KEY="wrong"
    )
    try:
        wait_until(lambda: "refused the API key (401)" in worker.logs(), 10)
        assert "CONVOAI_LLM_API_KEY" in _ready_model_check(worker)
        frames = _one_turn(infra, gateway)
    finally:
        worker.stop()
    assert frames[-1]["type"] == "reply.failed"
    assert frames[-1]["error"]["code"] == "model_auth_failed"


def test_a_working_endpoint_logs_its_models_and_is_ready(infra, namespace, gateway, mock_llm):
    worker = _worker(
        infra,
        namespace,
        CONVOAI_LLM_BASE_URL=f"{mock_llm.url}/v1",
        CONVOAI_LLM_API_KEY=MOCK_KEY,
        CONVOAI_DEFAULT_MODEL="mock-gpt",
    )
    try:
        wait_until(lambda: "answers; models: gpt-4o-mini, mock-gpt" in worker.logs(), 10)
        assert _ready_model_check(worker) == "ok"
        frames = _one_turn(infra, gateway)
    finally:
        worker.stop()
    assert frames[-1]["type"] == "reply.completed"

"""`/ready` answers 503 while a dependency the process needs is unreachable, and says which
and why; it recovers by itself."""

from __future__ import annotations

import httpx
import pytest

from tests.faults import TcpProxy
from tests.processes import wait_until

pytestmark = pytest.mark.e2e


def ready(url: str) -> httpx.Response:
    return httpx.get(f"{url}/ready", timeout=10)


def test_ready_names_the_unreachable_database_and_recovers(infra, start_service) -> None:
    proxy = TcpProxy.for_url(infra.database_url).start()
    try:
        mock = start_service("mock_llm", instance_id="ready-mock")
        worker = start_service(
            "chat_worker",
            instance_id="ready-worker",
            CONVOAI_DATABASE_URL=proxy.proxied_url(infra.database_url),
            CONVOAI_LLM_BASE_URL=f"{mock.url}/v1",
        )
        assert ready(worker.url).status_code == 200
        proxy.cut()
        answer = wait_until(lambda: (r := ready(worker.url)).status_code == 503 and r, timeout_s=20)
        body = answer.json()
        assert body["status"] == "unavailable"
        assert body["checks"]["broker"] == body["checks"]["model"] == "ok"
        assert body["checks"]["database"].startswith("unavailable: ")
        assert len(body["checks"]["database"]) > len("unavailable: ")
        proxy.restore()
        wait_until(lambda: ready(worker.url).status_code == 200, timeout_s=30)
    finally:
        proxy.close()


def test_ready_names_a_lost_broker_connection(infra, start_service) -> None:
    proxy = TcpProxy.for_url(infra.amqp_url).start()
    try:
        gateway = start_service(
            "gateway",
            instance_id="ready-gateway",
            CONVOAI_AMQP_URL=proxy.proxied_url(infra.amqp_url),
        )
        assert ready(gateway.url).status_code == 200
        proxy.cut()
        answer = wait_until(
            lambda: (r := ready(gateway.url)).status_code == 503 and r, timeout_s=20
        )
        checks = answer.json()["checks"]
        assert checks["database"] == "ok"
        assert checks["stream"] == "unavailable: ConnectionError: stream connection not open"
        proxy.restore()
        wait_until(lambda: ready(gateway.url).status_code == 200, timeout_s=30)
    finally:
        proxy.close()

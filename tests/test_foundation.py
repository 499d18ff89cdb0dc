"""The platform's processes start, answer health checks and share one broker."""

from __future__ import annotations

import signal

import httpx
import pytest
from sqlalchemy import text

from services.registry import MIGRATED_SCHEMAS, SERVICES
from shared.db import create_engine
from shared.migrations import upgrade_to_head

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_each_service_starts_and_is_ready(start_service, service):
    env = {}
    if service == "chat_worker":  # a worker is ready only with a model endpoint that answers
        env["CONVOAI_LLM_BASE_URL"] = f"{start_service('mock_llm').url}/v1"
    process = start_service(service, **env)
    health = httpx.get(f"{process.url}/health")
    assert health.status_code == 200
    assert health.json()["service"] == service
    ready = httpx.get(f"{process.url}/ready")
    assert ready.status_code == 200, ready.text
    assert process.stop(signal.SIGTERM) == 0


def test_two_gateways_share_one_broker(start_service):
    first = start_service("gateway", instance_id="gw-a")
    second = start_service("gateway", instance_id="gw-b")
    for process, name in ((first, "gw-a"), (second, "gw-b")):
        body = httpx.get(f"{process.url}/health").json()
        assert body["instance"] == name
        assert httpx.get(f"{process.url}/ready").status_code == 200


async def test_migrate_twice_is_idempotent_and_creates_every_schema(infra):
    await upgrade_to_head(infra.database_url, MIGRATED_SCHEMAS)
    await upgrade_to_head(infra.database_url, MIGRATED_SCHEMAS)
    engine = create_engine(infra.database_url, pool_size=1)
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT schema_name FROM information_schema.schemata"))
        schemas = {r[0] for r in rows}
    await engine.dispose()
    assert set(MIGRATED_SCHEMAS) <= schemas


def test_unreachable_broker_fails_with_one_clear_line(infra, start_service):
    process = start_service(
        "gateway",
        wait=False,
        CONVOAI_AMQP_URL="amqp://guest:secret@127.0.0.1:1/",
        CONVOAI_BROKER_CONNECT_TIMEOUT_S="1",
    )
    assert process.proc is not None
    assert process.proc.wait(30) == 3
    logs = process.logs()
    assert "Traceback" not in logs
    last = logs.strip().splitlines()[-1]
    assert last.startswith(
        "convoai serve gateway: RabbitMQ unreachable at amqp://guest:***@127.0.0.1:1/"
    )
    assert "secret" not in logs


def test_production_refuses_the_placeholder_secret_with_one_line(start_service):
    process = start_service(
        "auth",
        wait=False,
        CONVOAI_ENVIRONMENT="production",
        CONVOAI_JWT_SECRET="change-me-in-production-please-32-bytes!",
    )
    assert process.proc is not None
    assert process.proc.wait(30) == 2
    logs = process.logs().strip()
    assert "Traceback" not in logs
    assert logs.splitlines()[-1].startswith("convoai serve auth: invalid settings:")
    assert "placeholder" in logs

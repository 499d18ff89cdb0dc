"""The whole platform as real processes on a database and broker namespace of its own:
auth, gateway, a chat worker, mock_llm and analytics. Analytics counts everything in its
namespace, so nothing else may share it."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from services.registry import MIGRATED_SCHEMAS
from shared.broker import delete_topology
from shared.migrations import upgrade_to_head
from shared.topology import Topology
from tests.infra import TestInfrastructure, create_database, drop_database, new_run_id
from tests.processes import ServiceProcess

ADMIN_USERNAME = "platformadmin"
ADMIN_PASSWORD = "Admin-pass-123"


@dataclass
class Platform:
    infra: TestInfrastructure
    auth: ServiceProcess
    gateway: ServiceProcess
    worker: ServiceProcess
    mock_llm: ServiceProcess
    analytics: ServiceProcess


@pytest.fixture(scope="package")
async def platform(
    _server_urls: tuple[str, str], infra: TestInfrastructure
) -> AsyncIterator[Platform]:
    server_url, _ = _server_urls
    run_id = new_run_id()
    db_name = f"convoai_test_{run_id}_platform"
    own = dataclasses.replace(
        infra,
        database_url=await create_database(server_url, db_name),
        namespace=f"{infra.namespace}pf",
        jwt_secret=secrets.token_urlsafe(48),
    )
    await upgrade_to_head(own.database_url, MIGRATED_SCHEMAS)
    processes: list[ServiceProcess] = []

    def start(service: str, **env: str) -> ServiceProcess:
        process = ServiceProcess(service, own.env(**env), instance_id=f"pf-{service}")
        processes.append(process)
        return process.start()

    try:
        mock_llm = start("mock_llm")
        platform = Platform(
            infra=own,
            mock_llm=mock_llm,
            auth=start(
                "auth",
                CONVOAI_ADMIN_USERNAME=ADMIN_USERNAME,
                CONVOAI_ADMIN_EMAIL="admin@platform.example",
                CONVOAI_ADMIN_PASSWORD=ADMIN_PASSWORD,
            ),
            analytics=start("analytics_consumer"),
            gateway=start("gateway"),
            worker=start("chat_worker", CONVOAI_LLM_BASE_URL=f"{mock_llm.url}/v1"),
        )
        yield platform
    finally:
        for process in reversed(processes):
            process.stop()
        await delete_topology(own.amqp_url, Topology(own.namespace))
        await drop_database(server_url, db_name)

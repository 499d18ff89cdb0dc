"""The whole platform as real processes on a database and broker namespace of its own:
auth, gateway, a chat worker, mock_llm and analytics. Analytics counts everything in its
namespace, so nothing else may share it."""

from __future__ import annotations

import contextlib
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


@contextlib.asynccontextmanager
async def running_platform(
    server_url: str, infra: TestInfrastructure, name: str, **auth_env: str
) -> AsyncIterator[Platform]:
    """Every service as a process, on a database and broker namespace named for `name`."""
    run_id = new_run_id()
    db_name = f"convoai_test_{run_id}_{name}"
    own = dataclasses.replace(
        infra,
        database_url=await create_database(server_url, db_name),
        namespace=f"{infra.namespace}{name}",
        jwt_secret=secrets.token_urlsafe(48),
    )
    await upgrade_to_head(own.database_url, MIGRATED_SCHEMAS)
    processes: list[ServiceProcess] = []

    def start(service: str, **env: str) -> ServiceProcess:
        process = ServiceProcess(service, own.env(**env), instance_id=f"{name}-{service}")
        processes.append(process)
        return process.start()

    try:
        mock_llm = start("mock_llm")
        yield Platform(
            infra=own,
            mock_llm=mock_llm,
            auth=start("auth", **auth_env),
            analytics=start("analytics_consumer"),
            gateway=start("gateway"),
            worker=start("chat_worker", CONVOAI_LLM_BASE_URL=f"{mock_llm.url}/v1"),
        )
    finally:
        for process in reversed(processes):
            process.stop()
        await delete_topology(own.amqp_url, Topology(own.namespace))
        await drop_database(server_url, db_name)


@pytest.fixture(scope="package")
async def platform(
    _server_urls: tuple[str, str], infra: TestInfrastructure
) -> AsyncIterator[Platform]:
    server_url, _ = _server_urls
    async with running_platform(
        server_url,
        infra,
        "pf",
        CONVOAI_ADMIN_USERNAME=ADMIN_USERNAME,
        CONVOAI_ADMIN_EMAIL="admin@platform.example",
        CONVOAI_ADMIN_PASSWORD=ADMIN_PASSWORD,
    ) as platform:
        yield platform

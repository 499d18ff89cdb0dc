"""Session fixtures: this run's own database and broker namespace, and real service processes."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from services.registry import MIGRATED_SCHEMAS
from shared.broker import delete_topology
from shared.migrations import upgrade_to_head
from shared.topology import Topology
from tests.infra import (
    TestInfrastructure,
    create_database,
    drop_database,
    new_run_id,
    server_urls,
)
from tests.processes import ServiceProcess


@pytest.fixture(scope="session")
def _server_urls() -> Iterator[tuple[str, str]]:
    with server_urls() as urls:
        yield urls


@pytest.fixture(scope="session")
async def infra(_server_urls: tuple[str, str]) -> AsyncIterator[TestInfrastructure]:
    """This run's own database (migrated) and broker namespace; both removed afterwards."""
    server_url, amqp_url = _server_urls
    run_id = new_run_id()
    db_name = f"convoai_test_{run_id}"
    database_url = await create_database(server_url, db_name)
    await upgrade_to_head(database_url, MIGRATED_SCHEMAS)
    infrastructure = TestInfrastructure(
        database_url=database_url,
        amqp_url=amqp_url,
        namespace=f"t{run_id}",
        jwt_secret=secrets.token_urlsafe(48),
    )
    yield infrastructure
    await drop_database(server_url, db_name)
    await delete_topology(amqp_url, Topology(infrastructure.namespace))


@pytest.fixture(scope="session")
def start_service(infra: TestInfrastructure) -> Iterator[Callable[..., ServiceProcess]]:
    """Factory: `start_service("gateway", CONVOAI_X="y")` → a healthy process, stopped later."""
    started: list[ServiceProcess] = []

    def _start(
        service: str, *, instance_id: str | None = None, wait: bool = True, **env: str
    ) -> ServiceProcess:
        process = ServiceProcess(service, infra.env(**env), instance_id=instance_id)
        started.append(process)
        return process.start(wait=wait)

    yield _start
    for process in reversed(started):
        process.stop()

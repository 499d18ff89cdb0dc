"""The platform on a three-node RabbitMQ cluster behind HAProxy: a database and namespace of its
own, a gateway, two chat workers, analytics and mock_llm as real processes."""

from __future__ import annotations

import dataclasses
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest

from services.registry import MIGRATED_SCHEMAS
from shared.migrations import upgrade_to_head
from tests.cluster.rabbitmq_cluster import RabbitCluster, missing_tools
from tests.infra import TestInfrastructure, create_database, drop_database, new_run_id
from tests.processes import ServiceProcess

GATEWAY_INSTANCE = "fo-gw"
STARTUP_TIMEOUT_S = 120.0
ALLOWED_ORIGIN = "http://chat.example"


@pytest.fixture(scope="package")
def cluster() -> Iterator[RabbitCluster]:
    missing = missing_tools()
    if missing:
        pytest.skip(
            f"a RabbitMQ cluster needs {', '.join(missing)} on this machine "
            "(Debian: rabbitmq-server, haproxy; .ci/run installs haproxy)"
        )
    cluster = RabbitCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@dataclass
class ClusterStack:
    infra: TestInfrastructure
    cluster: RabbitCluster
    gateway: ServiceProcess
    workers: list[ServiceProcess]
    analytics: ServiceProcess
    mock_llm: ServiceProcess


@pytest.fixture(scope="package")
async def stack(
    _server_urls: tuple[str, str], infra: TestInfrastructure, cluster: RabbitCluster
) -> AsyncIterator[ClusterStack]:
    server_url, _ = _server_urls
    db_name = f"convoai_test_{new_run_id()}_cluster"
    own = dataclasses.replace(
        infra,
        database_url=await create_database(server_url, db_name),
        amqp_url=cluster.amqp_url,
        namespace=f"{infra.namespace}fo",
        jwt_secret=secrets.token_urlsafe(48),
    )
    await upgrade_to_head(own.database_url, MIGRATED_SCHEMAS)
    processes: list[ServiceProcess] = []

    def start(service: str, instance_id: str, **env: str) -> ServiceProcess:
        process = ServiceProcess(service, own.env(**env), instance_id=instance_id)
        processes.append(process)
        return process.start(wait=False)

    try:
        mock_llm = start("mock_llm", "fo-mock")
        worker_env = {
            "CONVOAI_LLM_BASE_URL": f"{mock_llm.url}/v1",
            "CONVOAI_LLM_RETRY_BASE_S": "0.1",
        }
        stack = ClusterStack(
            infra=own,
            cluster=cluster,
            mock_llm=mock_llm,
            analytics=start("analytics_consumer", "fo-analytics"),
            gateway=start(
                "gateway",
                GATEWAY_INSTANCE,
                CONVOAI_ALLOWED_ORIGINS=json.dumps([ALLOWED_ORIGIN]),
                CONVOAI_MESSAGES_PER_MINUTE="1000",
            ),
            workers=[start("chat_worker", f"fo-worker-{n}", **worker_env) for n in (1, 2)],
        )
        # Started side by side; a busy machine may take a while to import them all.
        for process in processes:
            process.wait_healthy(STARTUP_TIMEOUT_S)
        yield stack
    finally:
        for process in reversed(processes):
            process.stop()
        await drop_database(server_url, db_name)

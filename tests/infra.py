"""Where the test run's RabbitMQ and PostgreSQL come from, and how a run isolates itself.

With a reachable Docker daemon the session starts throwaway containers (testcontainers);
otherwise it uses the running local services named by CONVOAI_TEST_DATABASE_URL (a server URL;
the database part is replaced) and CONVOAI_TEST_AMQP_URL. Either way every run gets its own
database and its own broker namespace, so runs never see each other's data.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field

import asyncpg
from sqlalchemy.engine import make_url

from shared.db import asyncpg_dsn

DEFAULT_DATABASE_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


@dataclass(frozen=True)
class TestInfrastructure:
    database_url: str
    """Points at this run's own database (created by `isolated_database`)."""
    amqp_url: str
    namespace: str
    jwt_secret: str = field(repr=False)

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a `convoai serve` child process of this run."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONVOAI_")}
        env.update(
            CONVOAI_ENVIRONMENT="test",
            CONVOAI_DATABASE_URL=self.database_url,
            CONVOAI_AMQP_URL=self.amqp_url,
            CONVOAI_NAMESPACE=self.namespace,
            CONVOAI_JWT_SECRET=self.jwt_secret,
            CONVOAI_LOG_LEVEL="INFO",
        )
        env.update(extra)
        return env


def _docker_available() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
    except Exception:
        return False
    return True


@contextlib.contextmanager
def server_urls() -> Iterator[tuple[str, str]]:
    """(postgres server URL, amqp URL): containers when Docker works, local services otherwise."""
    if os.environ.get("CONVOAI_TEST_USE_CONTAINERS", "auto") != "never" and _docker_available():
        from testcontainers.postgres import PostgresContainer
        from testcontainers.rabbitmq import RabbitMqContainer

        with (
            PostgresContainer("postgres:16-alpine", driver="asyncpg") as pg,
            RabbitMqContainer("rabbitmq:3.13-management") as mq,
        ):
            params = mq.get_connection_params()
            amqp = f"amqp://guest:guest@{params.host}:{params.port}/"
            yield pg.get_connection_url(), amqp
        return
    yield (
        os.environ.get("CONVOAI_TEST_DATABASE_URL", DEFAULT_DATABASE_URL),
        os.environ.get("CONVOAI_TEST_AMQP_URL", DEFAULT_AMQP_URL),
    )


async def create_database(server_url: str, name: str) -> str:
    conn = await asyncpg.connect(asyncpg_dsn(server_url, "postgres"))
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


async def drop_database(server_url: str, name: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(server_url, "postgres"))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def new_run_id() -> str:
    return secrets.token_hex(4)

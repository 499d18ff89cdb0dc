"""Alembic, run programmatically: one migration history per owning service, in its own schema."""

from __future__ import annotations

import logging
from importlib import resources
from typing import Any

import asyncpg
from alembic import command
from alembic.config import Config
from sqlalchemy import MetaData, text
from sqlalchemy.engine import Connection, make_url

from shared.db import asyncpg_dsn, create_engine

log = logging.getLogger(__name__)

# Any constant works; it only has to be the same for every process that migrates.
_MIGRATION_LOCK_ID = 0x0C0417A1


def configure_and_run(context: Any, metadata: MetaData) -> None:
    """Body of every service's `migrations/env.py`: migrate the schema `metadata` lives in."""
    connection: Connection = context.config.attributes["connection"]
    schema = metadata.schema
    assert schema, "every service's metadata must name its schema"
    connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table_schema=schema,
        include_schemas=True,
        include_name=lambda name, type_, _parent: type_ != "schema" or name == schema,
    )
    with context.begin_transaction():
        context.run_migrations()


async def ensure_database(database_url: str) -> None:
    """Create the database named in `database_url` if it does not exist yet."""
    name = make_url(database_url).database
    conn = await asyncpg.connect(asyncpg_dsn(database_url, "postgres"))
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')
            log.info("database created", extra={"database": name})
    finally:
        await conn.close()


async def upgrade_to_head(database_url: str, packages: dict[str, str]) -> None:
    """Apply every package's migrations (`{"auth": "services.auth", ...}`); safe to repeat."""
    await ensure_database(database_url)
    engine = create_engine(database_url, pool_size=1)
    try:
        async with engine.begin() as conn:
            # Two processes migrating at once (compose replicas, parallel tests) take turns.
            await conn.execute(
                text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK_ID}
            )
            for schema, package in packages.items():
                await conn.run_sync(_upgrade_package, package)
                log.info("migrated", extra={"schema": schema})
    finally:
        await engine.dispose()


def _upgrade_package(connection: Connection, package: str) -> None:
    location = resources.files(package) / "migrations"
    config = Config()
    config.set_main_option("script_location", str(location))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")

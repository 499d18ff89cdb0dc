"""The web app in real Chromium against the whole platform as real processes: mock_llm, auth,
analytics, a gateway serving the app and two chat workers, on a database and broker namespace
of their own (analytics counts everything in its namespace, so nothing else may share it).

Debian's `chromium` is driven by Playwright (`executable_path`); Playwright's own browser
download is never used. Without /usr/bin/chromium these tests skip, saying so."""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from services.registry import MIGRATED_SCHEMAS
from shared.broker import delete_topology
from shared.migrations import upgrade_to_head
from shared.topology import Topology
from tests.infra import TestInfrastructure, create_database, drop_database, new_run_id
from tests.processes import ServiceProcess, free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "webapp"
ADMIN_USERNAME = "webadmin"
ADMIN_PASSWORD = "Admin-pass-123"
STARTUP_TIMEOUT_S = 180.0
"""For the whole stack: six processes importing at once on a busy 2-core machine."""


@dataclass
class Stack:
    infra: TestInfrastructure
    mock_llm: ServiceProcess
    auth: ServiceProcess
    analytics: ServiceProcess
    gateway: ServiceProcess
    workers: list[ServiceProcess]

    @property
    def url(self) -> str:
        return self.gateway.url


@pytest.fixture(scope="package")
def chromium_path() -> Path:
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: the web app tests need Debian's chromium package")
    return CHROMIUM


@pytest.fixture(scope="package")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    print(f"\nweb app screenshots go to {ARTIFACTS}")
    return ARTIFACTS


@pytest.fixture(scope="package")
async def stack(
    chromium_path: Path, _server_urls: tuple[str, str], infra: TestInfrastructure
) -> AsyncIterator[Stack]:
    server_url, _ = _server_urls
    db_name = f"convoai_test_{new_run_id()}_webapp"
    own = dataclasses.replace(
        infra,
        database_url=await create_database(server_url, db_name),
        namespace=f"{infra.namespace}wa",
        jwt_secret=secrets.token_urlsafe(48),
    )
    await upgrade_to_head(own.database_url, MIGRATED_SCHEMAS)
    processes: list[ServiceProcess] = []

    def start(service: str, name: str, port: int | None = None, **env: str) -> ServiceProcess:
        process = ServiceProcess(service, own.env(**env), instance_id=f"wa-{name}")
        if port is not None:
            process.port = port
        processes.append(process)
        return process

    try:
        mock_llm = start("mock_llm", "mock")
        auth = start(
            "auth",
            "auth",
            CONVOAI_ADMIN_USERNAME=ADMIN_USERNAME,
            CONVOAI_ADMIN_EMAIL="admin@webapp.example",
            CONVOAI_ADMIN_PASSWORD=ADMIN_PASSWORD,
            # Every test signs up and in from 127.0.0.1.
            CONVOAI_REGISTER_RATE_LIMIT="1000",
            CONVOAI_LOGIN_RATE_LIMIT="1000",
            # No grace for a rotated refresh token: the app must never send one twice (its
            # tabs take turns refreshing), and a stolen one is refused at once.
            CONVOAI_REFRESH_REUSE_GRACE_S="0",
        )
        analytics = start("analytics_consumer", "analytics")
        gateway_port = free_port()
        gateway = start(
            "gateway",
            "gateway",
            port=gateway_port,
            CONVOAI_AUTH_URL=auth.url,
            CONVOAI_ANALYTICS_URL=analytics.url,
            CONVOAI_ALLOWED_ORIGINS=f'["http://127.0.0.1:{gateway_port}"]',
            CONVOAI_ALLOWED_MODELS='["gpt-4o-mini", "mock-shell"]',
        )
        workers = [
            start("chat_worker", f"worker-{n}", CONVOAI_LLM_BASE_URL=f"{mock_llm.url}/v1")
            for n in (1, 2)
        ]
        # Started side by side: they need only the broker and the database, not each other.
        for process in processes:
            process.start(wait=False)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        for process in processes:
            process.wait_healthy(max(5.0, deadline - time.monotonic()))
        yield Stack(own, mock_llm, auth, analytics, gateway, workers)
    finally:
        for process in reversed(processes):
            process.stop()
        await delete_topology(own.amqp_url, Topology(own.namespace))
        await drop_database(server_url, db_name)


@pytest.fixture(scope="package")
async def browser(chromium_path: Path) -> AsyncIterator[object]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(chromium_path), headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        await browser.close()


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.url, timeout=15) as client:
        yield client

"""`convoai up`: every process of the platform on this machine, logs prefixed, Ctrl-C stops all.

Order: make sure PostgreSQL and RabbitMQ answer (start the local ones if they are installed but
stopped), migrate, then start mock_llm (only when no model key is configured), auth, analytics,
the gateway and the chat workers as `convoai serve` children, wait until each `/health`
answers, print the URLs. A child that dies afterwards is restarted with backoff, like compose's
`restart: on-failure`; a crash loop, SIGINT or SIGTERM stops everything.

A stack started with `--port-offset N` (or `--stack NAME`) is a separate stack: its own broker
namespace and its own database, so two stacks run side by side without sharing data or queues.

Over 400 lines on purpose: the supervisor (start, watch, restart with backoff, stop) and the
plan of children it supervises change together; split, each half would need the other to read.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import asyncpg
import httpx
from sqlalchemy.engine import make_url

from services.registry import MIGRATED_SCHEMAS
from shared.db import asyncpg_dsn
from shared.logging import redact_url
from shared.migrations import upgrade_to_head
from shared.settings import ServiceSettings

HEALTH_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
RESTART_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0)
"""Wait before the 1st, 2nd, … restart of a child within `CRASH_LOOP_WINDOW_S`."""
CRASH_LOOP_WINDOW_S = 120.0
"""A child that needs more restarts than `RESTART_BACKOFF_S` has within this window is in a
crash loop: restarting it again would only hide the fault, so the stack stops."""
_PR_SET_PDEATHSIG = 1

_COLOURS = ("36", "33", "35", "32", "34", "31", "96", "93")


class SetupError(RuntimeError):
    """Something the platform needs is missing; the message says what and how to fix it."""


@dataclass
class Child:
    name: str
    args: list[str]
    port: int
    colour: str
    env: dict[str, str] = field(default_factory=dict)
    process: asyncio.subprocess.Process | None = None
    pump: asyncio.Task[None] | None = None

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/health"


def _die_with_parent() -> None:
    """Runs in the child before exec: if `convoai up` is killed, its children follow."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


async def _postgres_answers(database_url: str) -> bool:
    try:
        conn = await asyncpg.connect(asyncpg_dsn(database_url, "postgres"), timeout=3)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


async def _rabbitmq_answers(amqp_url: str) -> bool:
    try:
        conn = await aio_pika.connect(amqp_url, timeout=3)
    except (TimeoutError, OSError, aio_pika.exceptions.AMQPError):
        return False
    await conn.close()
    return True


def _start_local_postgres() -> bool:
    clusters = Path("/etc/postgresql")
    if shutil.which("pg_ctlcluster") is None or not clusters.is_dir():
        return False
    for version in sorted(p.name for p in clusters.iterdir()):
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "start"],
            check=False,
            capture_output=True,
        )
    return True


def _start_local_rabbitmq() -> bool:
    if shutil.which("rabbitmq-server") is None:
        return False
    subprocess.run(["rabbitmq-server", "-detached"], check=False, capture_output=True)
    return True


async def _ensure_running(
    name: str,
    url: str,
    answers: Callable[[str], Awaitable[bool]],
    start: Callable[[], bool],
    hint: str,
) -> None:
    if await answers(url):
        return
    is_local = make_url(url).host in ("127.0.0.1", "localhost") if "://" in url else False
    if not is_local or not start():
        raise SetupError(f"{name} is not reachable at {redact_url(url)} and {hint}")
    print(f"[up] {name} was stopped; starting the local one …", flush=True)
    deadline = time.monotonic() + 60
    while not await answers(url):
        if time.monotonic() > deadline:
            raise SetupError(f"{name} was started but does not answer at {redact_url(url)}")
        await asyncio.sleep(1)


async def _pump(child: Child) -> None:
    """Copy a child's output to ours, each line prefixed with its name."""
    assert child.process is not None and child.process.stdout is not None
    prefix = (
        f"\x1b[{child.colour}m{child.name:<14}|\x1b[0m "
        if sys.stdout.isatty()
        else f"{child.name:<14}| "
    )
    async for line in child.process.stdout:
        sys.stdout.write(prefix + line.decode(errors="replace"))
        sys.stdout.flush()


async def _start(child: Child, base_env: dict[str, str]) -> None:
    child.process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        *child.args,
        env={**base_env, **child.env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        preexec_fn=_die_with_parent,
        start_new_session=True,  # Ctrl-C reaches us only; we stop the children in order
    )
    child.pump = asyncio.create_task(_pump(child))


async def _wait_healthy(children: list[Child]) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    pending = list(children)
    async with httpx.AsyncClient(timeout=1) as client:
        while pending:
            for child in list(pending):
                assert child.process is not None
                if child.process.returncode is not None:
                    raise SetupError(f"{child.name} exited with code {child.process.returncode}")
                try:
                    if (await client.get(child.health_url)).status_code == 200:
                        pending.remove(child)
                except httpx.HTTPError:
                    pass
            if pending and time.monotonic() > deadline:
                names = ", ".join(c.name for c in pending)
                raise SetupError(f"not healthy after {HEALTH_TIMEOUT_S:.0f}s: {names}")
            await asyncio.sleep(0.2)


async def _stop(children: list[Child]) -> None:
    running = [c for c in children if c.process is not None and c.process.returncode is None]
    for child in running:
        assert child.process is not None
        child.process.send_signal(signal.SIGTERM)
    for child in running:
        assert child.process is not None
        try:
            await asyncio.wait_for(child.process.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            print(
                f"[up] {child.name} did not stop in {STOP_TIMEOUT_S:.0f}s; killing it", flush=True
            )
            child.process.kill()
            await child.process.wait()
    for child in children:
        if child.pump is not None:
            await asyncio.gather(child.pump, return_exceptions=True)


@dataclass(frozen=True)
class Stack:
    """What makes one local stack independent of another on the same machine."""

    namespace: str
    database_url: str
    gateway_origins: tuple[str, ...]

    def env(self) -> dict[str, str]:
        return {
            "CONVOAI_NAMESPACE": self.namespace,
            "CONVOAI_DATABASE_URL": self.database_url,
            "CONVOAI_ALLOWED_ORIGINS": json.dumps(list(self.gateway_origins)),
        }


def plan_stack(
    settings: ServiceSettings, host: str, port_offset: int, name: str | None = None
) -> Stack:
    """The namespace, database and allowed browser origins of the stack to start.

    The default stack uses the configured namespace and database as they are. Another stack
    (`--stack NAME`, or `--port-offset N` which names it `pN`) appends its name to both, so its
    queues, its data and its accounts are its own.
    """
    suffix = name or (f"p{port_offset}" if port_offset else "")
    namespace, database_url = settings.namespace, settings.database_url
    if suffix:
        if not re.fullmatch(r"[a-z0-9]{1,12}", suffix):
            raise SetupError(f"stack name {suffix!r}: use 1-12 lowercase letters or digits")
        namespace = f"{namespace[: 31 - len(suffix)]}-{suffix}"
        url = make_url(database_url)
        url = url.set(database=f"{url.database or 'convoai'}_{suffix}")
        database_url = url.render_as_string(hide_password=False)
    gateway_port = 8000 + port_offset
    hosts = dict.fromkeys((host, "127.0.0.1", "localhost"))
    origins = tuple(f"http://{h}:{gateway_port}" for h in hosts if h not in ("0.0.0.0", "::"))
    return Stack(namespace, database_url, origins)


def _gateway_env(port_offset: int) -> dict[str, str]:
    """Where the gateway forwards the web app's sign-in, auth and analytics calls."""
    return {
        "CONVOAI_AUTH_URL": f"http://127.0.0.1:{8001 + port_offset}",
        "CONVOAI_ANALYTICS_URL": f"http://127.0.0.1:{8002 + port_offset}",
    }


def plan_children(workers: int, host: str, llm_key: str, port_offset: int = 0) -> list[Child]:
    """The processes to start, in start order; ports are the defaults shifted by `port_offset`."""
    colours = iter(_COLOURS * 4)

    def child(name: str, service: str, port: int, **env: str) -> Child:
        port += port_offset
        args = ["serve", service, "--host", host, "--port", str(port), "--instance-id", name]
        return Child(name, args, port, next(colours), env=env)

    children: list[Child] = []
    llm_env: dict[str, str] = {}
    if not llm_key:
        children.append(child("mock_llm", "mock_llm", 8009))
        llm_env = {"CONVOAI_LLM_BASE_URL": f"http://127.0.0.1:{8009 + port_offset}/v1"}
    children.append(child("auth", "auth", 8001))
    children.append(child("analytics", "analytics_consumer", 8002))
    # The gateway reads the model list from the same endpoint (CONVOAI_MODELS_SOURCE=server).
    children.append(child("gateway", "gateway", 8000, **_gateway_env(port_offset), **llm_env))
    # Workers listen on 8003, 8004, … (health and metrics only), stepping over mock_llm's 8009.
    worker_ports = (p for p in range(8003, 8100) if p != 8009)
    for n, port in zip(range(1, workers + 1), worker_ports, strict=False):
        children.append(child(f"chat_worker-{n}", "chat_worker", port, **llm_env))
    # Extraction and indexing of knowledge files, on the next port after the chat workers.
    children.append(child("knowledge_worker", "knowledge_worker", next(worker_ports), **llm_env))
    return children


async def _restart_after(
    child: Child, delay_s: float, base_env: dict[str, str], stop: asyncio.Event
) -> int | None:
    """Wait `delay_s` (or until the stack stops), start `child` again, return when it exits."""
    with suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), delay_s)
    if stop.is_set():
        return None
    if child.pump is not None:
        await asyncio.gather(child.pump, return_exceptions=True)
    await _start(child, base_env)
    assert child.process is not None
    print(f"[up] {child.name} restarted (pid {child.process.pid})", flush=True)
    return await child.process.wait()


async def _supervise(children: list[Child], base_env: dict[str, str], stop: asyncio.Event) -> int:
    """Restart children that die, with backoff; 0 once `stop` is set, 1 on a crash loop."""
    restarts: dict[str, list[float]] = {child.name: [] for child in children}
    stopper = asyncio.create_task(stop.wait())
    exits: dict[asyncio.Task[int | None], Child] = {
        asyncio.create_task(c.process.wait()): c for c in children if c.process
    }
    try:
        while True:
            done, _ = await asyncio.wait([stopper, *exits], return_when=asyncio.FIRST_COMPLETED)
            if stopper in done:
                return 0
            for task in done:
                child = exits.pop(task)
                code = task.result()
                now = time.monotonic()
                recent = [t for t in restarts[child.name] if now - t < CRASH_LOOP_WINDOW_S]
                if len(recent) >= len(RESTART_BACKOFF_S):
                    print(
                        f"[up] {child.name} exited with code {code} again: "
                        f"{len(recent) + 1} exits within {CRASH_LOOP_WINDOW_S:.0f}s is a crash "
                        "loop; stopping everything (its log lines above say why)",
                        flush=True,
                    )
                    return 1
                delay_s = RESTART_BACKOFF_S[len(recent)]
                restarts[child.name] = [*recent, now]
                print(
                    f"[up] {child.name} exited unexpectedly with code {code}; restarting it in "
                    f"{delay_s:.0f}s (restart {len(recent) + 1} of {len(RESTART_BACKOFF_S)} "
                    f"allowed within {CRASH_LOOP_WINDOW_S:.0f}s)",
                    flush=True,
                )
                restart = _restart_after(child, delay_s, base_env, stop)
                exits[asyncio.create_task(restart)] = child
    finally:
        for task in [stopper, *exits]:
            task.cancel()
        await asyncio.gather(stopper, *exits, return_exceptions=True)


async def _run(workers: int, host: str, port_offset: int, stack_name: str | None) -> int:
    settings = ServiceSettings()
    stack = plan_stack(settings, host, port_offset, stack_name)
    await _ensure_running(
        "PostgreSQL",
        stack.database_url,
        _postgres_answers,
        _start_local_postgres,
        "no local PostgreSQL is installed (apt install postgresql, or set CONVOAI_DATABASE_URL)",
    )
    await _ensure_running(
        "RabbitMQ",
        settings.amqp_url,
        _rabbitmq_answers,
        _start_local_rabbitmq,
        "no local RabbitMQ is installed (apt install rabbitmq-server, or set CONVOAI_AMQP_URL)",
    )
    await upgrade_to_head(stack.database_url, MIGRATED_SCHEMAS)
    print(
        f"[up] database {make_url(stack.database_url).database} migrated "
        f"({', '.join(MIGRATED_SCHEMAS)}); broker namespace {stack.namespace}",
        flush=True,
    )

    llm_key = os.environ.get("CONVOAI_LLM_API_KEY", "")
    children = plan_children(workers, host, llm_key, port_offset)
    if not llm_key:
        print(
            "[up] no CONVOAI_LLM_API_KEY: starting mock_llm and pointing the workers at it",
            flush=True,
        )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    base_env = {**os.environ, **stack.env()}
    if "CONVOAI_ALLOWED_ORIGINS" in os.environ:  # the operator's own list wins
        base_env["CONVOAI_ALLOWED_ORIGINS"] = os.environ["CONVOAI_ALLOWED_ORIGINS"]
    exit_code = 0
    try:
        for child in children:
            await _start(child, base_env)
        await _wait_healthy(children)
        print("\n[up] ConvoAI is running:", flush=True)
        for child in children:
            print(f"[up]   {child.name:<14} http://{host}:{child.port}", flush=True)
        print(f"[up]   chat WebSocket ws://{host}:{8000 + port_offset}/ws", flush=True)
        print("[up] Ctrl-C stops everything.\n", flush=True)
        exit_code = await _supervise(children, base_env, stop)
    except SetupError as exc:
        print(f"[up] {exc}", file=sys.stderr, flush=True)
        exit_code = 1
    finally:
        print("[up] stopping …", flush=True)
        await _stop(children)
        print("[up] stopped", flush=True)
    return exit_code


def run_local_stack(
    workers: int = 2, host: str = "127.0.0.1", port_offset: int = 0, stack_name: str | None = None
) -> int:
    try:
        return asyncio.run(_run(workers, host, port_offset, stack_name))
    except SetupError as exc:
        print(f"[up] {exc}", file=sys.stderr)
        return 1

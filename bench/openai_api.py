"""OpenAI-compatible API benchmark: the same U concurrent `openai` SDK clients streaming from
(a) mock_llm directly and (b) ConvoAI's `/v1` (gateway → broker → worker → mock_llm), in one run.

Starts its own processes (`convoai serve` mock_llm, auth, gateway, chat_worker) on a throwaway
database and broker namespace, creates a user and an API key, then reports for both: requests/s
and time to first token p50/p99; for (b) also CPU-ms per request of the ConvoAI processes
(gateway + worker, from /proc), and the measured cost of the budget and rate checks: the
ledger's clauses in the message and final-reply statements, timed by bench/ledger_overhead.py.

Prints one JSON object. Not a test: numbers depend on the machine and its load.

    .venv/bin/python bench/openai_api.py [--users 20] [--requests 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import openai

from services.registry import MIGRATED_SCHEMAS
from shared.migrations import upgrade_to_head

SERVER_URL = os.environ.get(
    "CONVOAI_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
AMQP_URL = os.environ.get("CONVOAI_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
MODEL = "gpt-4o-mini"
ADMIN_PASSWORD = f"Adm1n-{secrets.token_hex(8)}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))], 2)


def cpu_ms(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


class Stack:
    def __init__(self, database_url: str, namespace: str, log_dir: Path) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CONVOAI_")}
        self.env.update(
            CONVOAI_ENVIRONMENT="test",
            CONVOAI_DATABASE_URL=database_url,
            CONVOAI_AMQP_URL=AMQP_URL,
            CONVOAI_NAMESPACE=namespace,
            CONVOAI_JWT_SECRET=secrets.token_urlsafe(48),
            CONVOAI_LOG_LEVEL="WARNING",
        )
        self.log_dir = log_dir
        self.procs: dict[str, tuple[subprocess.Popen[bytes], str]] = {}

    def start(self, service: str, **extra: str) -> str:
        port = free_port()
        log = (self.log_dir / f"{service}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "serve", service, "--port", str(port)],
            env={**self.env, **extra},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        self.procs[service] = (proc, url)
        return url

    def wait(self, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        for service, (proc, url) in self.procs.items():
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{service} exited; see {self.log_dir}")
                try:
                    if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{service} not healthy")
                time.sleep(0.2)

    def stop(self) -> None:
        for proc, _ in self.procs.values():
            proc.terminate()
        for proc, _ in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


async def run_clients(base_url: str, api_key: str, users: int, requests: int) -> dict[str, Any]:
    ttft: list[float] = []
    errors = 0
    first_error: str | None = None

    async def user(index: int) -> None:
        nonlocal errors, first_error
        client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0)
        for n in range(requests):
            started = time.perf_counter()
            first: float | None = None
            try:
                stream = await client.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": f"bench {index} {n}"}],
                    stream=True,
                    stream_options={"include_usage": True},
                )
                async for chunk in stream:
                    if first is None and chunk.choices and chunk.choices[0].delta.content:
                        first = time.perf_counter()
            except openai.OpenAIError as exc:
                errors += 1
                first_error = first_error or repr(exc)[:300]
                continue
            if first is not None:
                ttft.append((first - started) * 1000)
        await client.close()

    started = time.perf_counter()
    await asyncio.gather(*(user(i) for i in range(users)))
    elapsed = time.perf_counter() - started
    return {
        "requests": users * requests,
        "errors": errors,
        **({"first_error": first_error} if first_error else {}),
        "requests_per_s": round((users * requests - errors) / elapsed, 1),
        "ttft_ms": {"p50": percentile(ttft, 50), "p99": percentile(ttft, 99)},
    }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--users", type=int, default=20, help="concurrent SDK clients (U)")
    parser.add_argument("--requests", type=int, default=10, help="streamed requests per client")
    parser.add_argument("--ledger-samples", type=int, default=300, help="ledger timing samples")
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.ledger_overhead import ledger_overhead
    from tests.infra import create_database, drop_database  # the same throwaway database helpers

    run = secrets.token_hex(4)
    name = f"convoai_bench_{run}"
    database_url = await create_database(SERVER_URL, name)
    result: dict[str, Any] = {"users": args.users, "requests_per_user": args.requests}
    with tempfile.TemporaryDirectory() as logs:
        stack = Stack(database_url, f"bench{run}", Path(logs))
        try:
            await upgrade_to_head(database_url, MIGRATED_SCHEMAS)
            mock = stack.start("mock_llm")
            auth = stack.start(
                "auth",
                CONVOAI_ADMIN_USERNAME="benchadmin",
                CONVOAI_ADMIN_EMAIL="benchadmin@example.com",
                CONVOAI_ADMIN_PASSWORD=ADMIN_PASSWORD,
            )
            gateway = stack.start(
                "gateway",
                CONVOAI_AUTH_URL=auth,  # where the gateway checks API keys
                CONVOAI_ALLOWED_MODELS=json.dumps([MODEL]),
                CONVOAI_API_REQUESTS_PER_MINUTE="100000",
                CONVOAI_MESSAGES_PER_MINUTE="100000",
            )
            stack.start("chat_worker", CONVOAI_LLM_BASE_URL=f"{mock}/v1")
            stack.wait()
            async with httpx.AsyncClient(base_url=auth, timeout=60) as client:
                token = (
                    await client.post(
                        "/auth/token", data={"username": "benchadmin", "password": ADMIN_PASSWORD}
                    )
                ).json()["access_token"]
                key = (
                    await client.post(
                        "/api-keys",
                        json={"name": "bench"},
                        headers={"Authorization": f"Bearer {token}"},
                    )
                ).json()["secret"]
            await run_clients(f"{gateway}/v1", key, 2, 2)  # warm up both paths
            result["mock_llm_direct"] = await run_clients(
                f"{mock}/v1", "unused", args.users, args.requests
            )
            pids = [stack.procs[s][0].pid for s in ("gateway", "chat_worker")]
            before = sum(cpu_ms(p) for p in pids)
            convoai = await run_clients(f"{gateway}/v1", key, args.users, args.requests)
            convoai["cpu_ms_per_request"] = round(
                (sum(cpu_ms(p) for p in pids) - before) / max(1, convoai["requests"]), 2
            )
            result["convoai_v1"] = convoai
            result["ledger"] = await ledger_overhead(database_url, args.ledger_samples)
        finally:
            stack.stop()
            await drop_database(SERVER_URL, name)
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())

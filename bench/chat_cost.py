"""Chat cost benchmark: what a turn and an idle socket cost, next to the floors, in one JSON object.

It starts nothing. Run a stack first (its own ports and namespace, the limits raised):

    CONVOAI_MESSAGES_PER_MINUTE=100000 CONVOAI_WS_FRAMES_PER_SECOND=1000 \\
        convoai up --workers 2 --port-offset 300 --stack perf
    .venv/bin/python bench/chat_cost.py --port-offset 300 --stack perf --idle-sockets 10000

One run prints:
- `broker_floor`: aio-pika round trips on the same RabbitMQ (bench/chat_load.py's);
- `direct_to_model`: the same `--users` clients with the `openai` SDK streaming straight from
  mock_llm, back to back: the rate and mock_llm's CPU per request;
- `through_litellm`: those clients through LiteLLM's proxy in front of the same mock_llm, with
  the proxy's CPU per request (bench/litellm_proxy.py; skipped, saying how to install it, unless
  the `[bench]` extra is installed);
- `paced` and `saturation`: ConvoAI turns over WebSockets (chat_load.py's scenarios) with CPU-ms
  per turn of every stack process, from /proc/<pid>/stat utime+stime over the measured window.
  Processes are found by the `--port` on their command line (`convoai serve ... --port P`);
  RabbitMQ (beam.smp) and this stack's PostgreSQL backends are listed too, but both are shared
  with whatever else runs on the machine;
- `broker_per_turn`: publishes per turn by exchange and frame/event type, and deliveries per turn
  by queue. The management plugin is off on this broker (and rabbitmqctl's list_queues has no
  message counters without it), so publishes are counted by a tap queue bound with `#` to the
  stack's exchanges (and consumed after the measured window, not in it), and deliveries are
  those publishes routed through the bindings that `rabbitmqctl list_bindings` reports
  (redeliveries are not counted; the default exchange is not tapped — the stack publishes
  nothing there);
- `idle_sockets`: `--idle-sockets` authenticated sockets opened on the gateway (with
  permessage-deflate offered, as browsers do) and held by a child process: the gateway's RSS
  before and after, KiB per socket, the open rate, the gateway's CPU per socket opened (the
  client processes' too, and how busy the gateway's core was: near 1, it set the rate), and
  chat turns on another socket (of this process) while they are all open; then, for
  `--idle-hold-s`, every socket sends a `ping` frame every `--idle-ping-s` and must get its
  `pong` (uvicorn's protocol pings, every 20 s, are answered by bench/idle_client.py), with the
  gateway's RSS after each round: it must not grow;
- `rss_mib_at_rest` of every process before the load, and `rss_mib_after` at the end.

Over 400 lines on purpose: one script to run and read; its measurements share the stack, the
process table and the broker tap.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import chat_load
import httpx
import idle_client
import openai
import uvloop
from sqlalchemy.engine import make_url

from services.mock_llm.settings import MockLLMSettings
from services.runner import plan_stack
from shared.settings import ServiceSettings

TICKS_PER_S = os.sysconf("SC_CLK_TCK")
# What `direct_to_model`'s clients ask for (mock_llm serves any name; a proxy routes this one).
CLIENT_MODEL = "gpt-4o-mini"
STACK_PORTS = range(8000, 8100)


# --- processes -------------------------------------------------------------------------------


def stack_processes(port_offset: int, database: str) -> dict[str, int]:
    """name → pid of this stack's `convoai serve` children, RabbitMQ and its PostgreSQL backends."""
    ports = {str(p + port_offset) for p in STACK_PORTS}
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in args if a]
        if "serve" in words and "--port" in words:
            port = words[words.index("--port") + 1]
            if port in ports and "--instance-id" in words:
                found[words[words.index("--instance-id") + 1]] = int(entry.name)
        # The broker's VM, not a rabbitmqctl's (an Erlang VM too, for a moment: BrokerTap runs
        # one, and so may any other benchmark on the machine).
        elif words and words[0].endswith("beam.smp") and " -s rabbit boot " in " ".join(words):
            found["rabbitmq (shared)"] = int(entry.name)
        elif words and words[0].startswith("postgres: ") and f" {database} " in words[0]:
            found[f"postgres backend {entry.name}"] = int(entry.name)
    return found


def cpu_ms(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / TICKS_PER_S


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class CpuWindow:
    """CPU-ms of each process between `start()` and `stop()`.

    `rescan` (optional) lists the processes again at `stop()`: one that appeared during the
    window (a PostgreSQL backend of a pool that grew under load) counts with all its CPU, which
    it spent inside the window. Without it such backends went uncounted, and the first run after
    a stack's start showed PostgreSQL at a twentieth of its real cost.
    """

    def __init__(
        self, processes: dict[str, int], rescan: Callable[[], dict[str, int]] | None = None
    ) -> None:
        self.processes = processes
        self.rescan = rescan
        self.before: dict[str, float] = {}
        self.spent: dict[str, float] = {}

    def start(self) -> None:
        if self.rescan is not None:
            self.processes = self.rescan()
        self.before = {name: cpu_ms(pid) for name, pid in self.processes.items()}

    def stop(self) -> None:
        # A process gone by now (a backend closed by its pool) is left out: its CPU is unknown.
        now = self.rescan() if self.rescan is not None else self.processes
        self.spent = {n: cpu_ms(p) - self.before.get(n, 0.0) for n, p in now.items()}

    def per(self, units: int) -> dict[str, Any]:
        if not units:
            return {}
        backends = sum(v for n, v in self.spent.items() if n.startswith("postgres backend"))
        out = {
            n: round(v / units, 3)
            for n, v in self.spent.items()
            if not n.startswith("postgres backend")
        }
        out["postgres backends of this stack (shared server)"] = round(backends / units, 3)
        ours = [
            v
            for n, v in self.spent.items()
            if n.startswith(("gateway", "chat_worker", "analytics"))
        ]
        out["ours: gateway + chat workers + analytics"] = round(sum(ours) / units, 3)
        return out


def memory_mib(processes: dict[str, int]) -> dict[str, float]:
    return {
        n: round(rss_kib(p) / 1024, 1)
        for n, p in processes.items()
        if not n.startswith("postgres backend")
    }


# --- broker publishes and deliveries ---------------------------------------------------------


def topic_matches(pattern: str, key: str) -> bool:
    def match(p: list[str], k: list[str]) -> bool:
        if not p:
            return not k
        if p[0] == "#":
            return any(match(p[1:], k[i:]) for i in range(len(k) + 1))
        return bool(k) and (p[0] in ("*", k[0])) and match(p[1:], k[1:])

    return match(pattern.split("."), key.split("."))


class BrokerTap:
    """Counts what is published to the stack's exchanges (one tap queue bound with `#`).

    The tap queue is consumed only after the measured window (`drain`): consuming it meanwhile,
    on this process's event loop, cost ~1 ms of CPU per turn (6 messages through aio-pika) on the
    cores the stack is measured on, three to six times the virtual users' own (this process:
    1.29-1.31 ms per turn with it, 0.17-0.32 without), and capped the turns measured (129-141
    turns/s with it, 201-203 without, 50 users, same stack).
    """

    def __init__(self, amqp_url: str, namespace: str) -> None:
        self.amqp_url = amqp_url
        self.exchanges = [f"{namespace}.{x}" for x in ("events", "stream", "control")]
        self.by_key: Counter[tuple[str, str]] = Counter()
        self.by_type: Counter[str] = Counter()
        self.tap_name = ""

    async def __aenter__(self) -> BrokerTap:
        self.connection = await aio_pika.connect_robust(self.amqp_url)
        channel = await self.connection.channel()
        self.queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        self.tap_name = self.queue.name
        for exchange in self.exchanges:
            await self.queue.bind(exchange, "#")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.connection.close()

    async def start(self) -> None:
        """Count from now on: what the tap queue holds is dropped."""
        await self.queue.purge()
        self.by_key.clear()
        self.by_type.clear()

    async def drain(self) -> None:
        """Count what the tap queue has received since `start`."""
        remaining = (await self.queue.declare()).message_count or 0
        if not remaining:
            return
        async with self.queue.iterator(no_ack=True) as messages:
            async for message in messages:
                self._count(message)
                remaining -= 1
                if not remaining:
                    break

    def _count(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        exchange = message.exchange or ""
        key = message.routing_key or ""
        self.by_key[(exchange, key)] += 1
        kind = key
        if exchange.endswith((".stream", ".control")):
            try:
                kind = str(json.loads(message.body).get("type", "?"))
            except ValueError:
                kind = "?"
        self.by_type[f"{exchange.rsplit('.', 1)[-1]}: {kind}"] += 1

    def bindings(self) -> list[tuple[str, str, str]]:
        out = subprocess.run(
            [
                *("rabbitmqctl", "list_bindings", "-q", "--formatter", "json"),
                *("source_name", "destination_name", "routing_key"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        return [
            (b["source_name"], b["destination_name"], b["routing_key"])
            for b in json.loads(out)
            if b["source_name"] in self.exchanges and b["destination_name"] != self.tap_name
        ]

    def per_turn(self, turns: int, bindings: list[tuple[str, str, str]]) -> dict[str, Any]:
        deliveries: Counter[str] = Counter()
        for (exchange, key), n in self.by_key.items():
            targets = {d for s, d, p in bindings if s == exchange and topic_matches(p, key)}
            for target in targets:
                # Gateway and worker queues carry an instance id; group them by role.
                role = target.split(".", 1)[1] if "." in target else target
                for instance_role in ("gateway.", "worker."):
                    if role.startswith(instance_role):
                        role = f"{instance_role}<instance>.{role.rsplit('.', 1)[-1]}"
                deliveries[role] += n
        publishes = sum(self.by_key.values())
        return {
            "method": "tap queue bound with # to events/stream/control + rabbitmqctl "
            "list_bindings (management plugin off)",
            "turns": turns,
            "publishes_per_turn": round(publishes / turns, 2) if turns else None,
            "deliveries_per_turn": round(sum(deliveries.values()) / turns, 2) if turns else None,
            "publishes_per_turn_by_type": {
                k: round(v / turns, 2) for k, v in sorted(self.by_type.items())
            },
            "deliveries_per_turn_by_queue": {
                k: round(v / turns, 2) for k, v in sorted(deliveries.items())
            },
        }


# --- scenarios -------------------------------------------------------------------------------


async def direct_to_model(
    base_url: str,
    users: int,
    duration_s: float,
    cpu: CpuWindow,
    api_key: str = "bench",
    report: tuple[str, ...] = ("mock_llm",),
):
    """The same clients streaming with the openai SDK from mock_llm at `base_url`, or from a
    proxy in front of it (bench/litellm_proxy.py); CPU per request of the processes whose names
    start with one of `report`."""
    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0)
    done = 0
    wrong = 0
    unfinished = 0
    deadline = time.perf_counter() + duration_s

    async def run(index: int) -> None:
        nonlocal done, wrong, unfinished
        n = 0
        while time.perf_counter() < deadline:
            stream = await client.chat.completions.create(
                model=CLIENT_MODEL,
                messages=[{"role": "user", "content": f"{chat_load.FAST_MARK} d{index} {n}"}],
                stream=True,
            )
            text = ""
            finish_reason = None
            async for chunk in stream:
                if chunk.choices:
                    text += chunk.choices[0].delta.content or ""
                    finish_reason = chunk.choices[0].finish_reason or finish_reason
            done += 1
            wrong += not text
            # A stream cut short (by a proxy, say) ends without one: counted, not hidden.
            unfinished += finish_reason is None
            n += 1

    cpu.start()
    started = time.perf_counter()
    await asyncio.gather(*(run(i) for i in range(users)))
    elapsed = time.perf_counter() - started
    cpu.stop()
    await client.close()
    return {
        "concurrency": users,
        "requests": done,
        "requests_per_s": round(done / elapsed, 1),
        "empty_replies": wrong,
        "replies_without_finish_reason": unfinished,
        "cpu_ms_per_request": {
            n: round(v / done, 3) for n, v in cpu.spent.items() if n.startswith(report) and done
        },
    }


async def measured_saturation(
    users: list[chat_load.VirtualUser],
    duration_s: float,
    mock: MockLLMSettings,
    cpu: CpuWindow,
    tap: BrokerTap,
) -> tuple[dict[str, Any], dict[str, Any]]:
    await tap.start()
    cpu.start()
    result = await chat_load.saturation(users, duration_s, mock)
    cpu.stop()
    # Events of the last turns may still be on their way to the tap queue: let them arrive.
    await asyncio.sleep(1.0)
    await tap.drain()
    turns = result["check"]["complete"] + result["check"]["failed"]
    result["cpu_ms_per_turn"] = cpu.per(turns)
    result["cpu_ms_per_turn"]["bench client (this process)"] = result["client_cpu_ms_per_turn"]
    broker = tap.per_turn(turns, await asyncio.to_thread(tap.bindings))
    return result, broker


class IdleSockets:
    """Idle authenticated sockets held by `clients` child processes, so the chat turns timed
    meanwhile are not slowed by the client's own event loop answering 10 000 sockets' protocol
    pings, and opening them is not limited to one client process's CPU. Each child's CPU over the
    opening is reported next to the gateway's: the client must cost less, or it sets the rate."""

    def __init__(self, gateway_ws: str, count: int, clients: int) -> None:
        self._pipes: list[Connection] = []
        self._processes = []
        context = multiprocessing.get_context("spawn")
        for n in range(clients):
            ours, theirs = context.Pipe()
            share = count // clients + (n < count % clients)
            self._pipes.append(ours)
            self._processes.append(
                context.Process(
                    target=hold_idle_sockets, args=(theirs, gateway_ws, share, n), daemon=True
                )
            )

    async def ask(self, command: str) -> list[dict[str, Any]]:
        """Every child's answer to `command`; they work on it at the same time."""
        for pipe in self._pipes:
            pipe.send(command)
        return list(await asyncio.gather(*(asyncio.to_thread(p.recv) for p in self._pipes)))

    async def open(self) -> dict[str, Any]:
        for process in self._processes:
            process.start()
        await self.ask("ready")  # spawned and imported: only the opening is timed
        answers = await self.ask("open")
        failures: Counter[str] = Counter()
        for answer in answers:
            failures.update(answer["failures"])
        return {
            "opened": sum(a["opened"] for a in answers),
            "failures": dict(failures),
            "seconds": max(a["seconds"] for a in answers),
            "client_cpu_ms": sum(a["cpu_ms"] for a in answers),
        }

    async def pongs(self) -> int:
        return sum(a["pongs"] for a in await self.ask("ping"))

    async def close(self) -> float:
        answers = await self.ask("close")
        for process in self._processes:
            process.join(30)
        return max(a["seconds"] for a in answers)


def hold_idle_sockets(commands: Connection, gateway_ws: str, count: int, client: int) -> None:
    """A child process: opens `count` sockets, then pings them or closes them on command."""
    uvloop.run(_hold_idle_sockets(commands, gateway_ws, count, client))


async def _hold_idle_sockets(
    commands: Connection, gateway_ws: str, count: int, client: int
) -> None:
    settings = ServiceSettings()
    run = f"{os.urandom(3).hex()}{client}"
    opener = idle_client.IdleClient(f"{gateway_ws}/ws")
    sockets: list[idle_client.IdleSocket] = []
    failures: Counter[str] = Counter()
    gate = asyncio.Semaphore(200)
    # Minted before the opening is timed, as a browser's token comes from an earlier login.
    tokens = [chat_load.access_token(settings, f"idle{run}{i:06d}"[:16]) for i in range(count)]

    async def one(token: str) -> None:
        async with gate:
            try:
                async with asyncio.timeout(60):
                    sockets.append(await opener.open(token))
            except Exception as exc:  # counted and reported
                failures[type(exc).__name__] += 1

    async def ping(socket: idle_client.IdleSocket) -> bool:
        async with gate:
            try:
                async with asyncio.timeout(60):
                    await socket.ping()
            except Exception:
                return False
            return True

    while True:
        command = await asyncio.to_thread(commands.recv)
        started = time.perf_counter()
        cpu_before = chat_load.client_cpu_ms()
        if command == "ready":
            commands.send({})
        elif command == "open":
            await asyncio.gather(*(one(t) for t in tokens))
            commands.send(
                {
                    "opened": len(sockets),
                    "failures": dict(failures),
                    "seconds": time.perf_counter() - started,
                    "cpu_ms": chat_load.client_cpu_ms() - cpu_before,
                }
            )
        elif command == "ping":
            # Every socket sends a `ping` frame and must get its `pong` back (within 60 s).
            pongs = sum(await asyncio.gather(*(ping(s) for s in sockets)))
            commands.send({"pongs": pongs})
        else:
            await asyncio.gather(*(s.close() for s in sockets), return_exceptions=True)
            commands.send({"seconds": time.perf_counter() - started})
            return


async def chat_turns(chatter: chat_load.VirtualUser, mock: MockLLMSettings, label: str):
    turns = []
    for n in range(20):
        turns.append(await chatter.send(f"{chat_load.FAST_MARK} {chatter.name} {label} {n}"))
        await chat_load.wait_all(turns[-1:], 30)
    return chat_load.latencies(turns), vars(chat_load.check(turns, mock, chat_load.FAST_TOKENS))


async def idle_sockets(
    gateway_ws: str,
    count: int,
    gateway_pid: int,
    chatter: chat_load.VirtualUser,
    mock: MockLLMSettings,
    hold_s: float,
    ping_every_s: float,
    clients: int,
) -> dict[str, Any]:
    """`count` authenticated sockets that do nothing, and chat turns on another one meanwhile."""
    idle = IdleSockets(gateway_ws, count, clients)
    rss_before = rss_kib(gateway_pid)
    cpu_before = cpu_ms(gateway_pid)
    opening = await idle.open()
    open_cpu_ms = cpu_ms(gateway_pid) - cpu_before
    opened = opening["opened"]
    await asyncio.sleep(2.0)  # let the gateway settle (freed handshake buffers) before reading
    rss_after = rss_kib(gateway_pid)
    latency, verdict = await chat_turns(chatter, mock, "idle")
    held: dict[str, Any] = {}
    if hold_s > 0:
        # Idle for `hold_s`, but for a ping from every socket every `ping_every_s`.
        rounds = []
        hold_started = time.perf_counter()
        while time.perf_counter() - hold_started < hold_s:
            await asyncio.sleep(ping_every_s)
            answered = await idle.pongs()
            rounds.append(
                {
                    "at_s": round(time.perf_counter() - hold_started, 1),
                    "pongs": answered,
                    "gateway_rss_mib": round(rss_kib(gateway_pid) / 1024, 1),
                }
            )
        after_latency, after_verdict = await chat_turns(chatter, mock, "held")
        held = {
            "held_s": round(time.perf_counter() - hold_started, 1),
            "ping_rounds": rounds,
            "pings_sent": len(rounds) * opened,
            "pongs": sum(r["pongs"] for r in rounds),
            "rss_growth_mib_first_to_last_round": round(
                rounds[-1]["gateway_rss_mib"] - rounds[0]["gateway_rss_mib"], 1
            )
            if rounds
            else None,
            "rss_growth_mib_since_opened": round((rss_kib(gateway_pid) - rss_after) / 1024, 1),
            "turn_after_hold_ms": after_latency["time_to_complete_ms"],
            "turn_after_hold_check": after_verdict,
        }
    close_cpu_before = cpu_ms(gateway_pid)
    close_s = await idle.close()
    return {
        "requested": count,
        "opened": opened,
        "failures": opening["failures"],
        "client_processes": clients,
        "open_per_s": round(opened / opening["seconds"], 1),
        "gateway_cpu_ms_per_open": round(open_cpu_ms / opened, 3) if opened else None,
        "client_cpu_ms_per_open": round(opening["client_cpu_ms"] / opened, 3) if opened else None,
        # Near 1 when the gateway's one core, not the client, sets the open rate.
        "gateway_core_busy_while_opening": round(open_cpu_ms / 1000 / opening["seconds"], 2),
        "gateway_rss_mib_before": round(rss_before / 1024, 1),
        "gateway_rss_mib_after": round(rss_after / 1024, 1),
        "kib_per_socket": round((rss_after - rss_before) / opened, 1) if opened else None,
        "turn_while_open_ms": latency["time_to_complete_ms"],
        "turn_while_open_ttff_ms": latency["time_to_first_frame_ms"],
        "turn_check": verdict,
        **held,
        "close_all_s": round(close_s, 1),
        "gateway_cpu_ms_per_close": round((cpu_ms(gateway_pid) - close_cpu_before) / opened, 3)
        if opened
        else None,
    }


async def database_state(database_url: str) -> dict[str, Any]:
    """The stack's database as the run finds it. On a server with autovacuum off (this
    machine's), every turn's updated rows stay dead until someone vacuums, and a stack that has
    served many runs is measurably slower than a fresh one: stated, so runs compare fairly."""
    url = make_url(database_url).set(drivername="postgresql")
    connection = await asyncpg.connect(url.render_as_string(hide_password=False))
    try:
        autovacuum = await connection.fetchval("SHOW autovacuum")
        row = await connection.fetchrow(
            "SELECT coalesce(sum(n_live_tup), 0) AS live, coalesce(sum(n_dead_tup), 0) AS dead"
            " FROM pg_stat_user_tables"
        )
    finally:
        await connection.close()
    assert row is not None
    return {"autovacuum": autovacuum, "live_rows": int(row["live"]), "dead_rows": int(row["dead"])}


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--port-offset", type=int, default=0, help="the stack's --port-offset")
    parser.add_argument("--stack", help="the stack's --stack name (default: pN for offset N)")
    parser.add_argument("--users", type=int, default=50, help="virtual users (one socket each)")
    parser.add_argument("--rate", type=float, default=1.0, help="messages/s per paced user")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per scenario")
    parser.add_argument("--idle-sockets", type=int, default=10_000, help="0 skips the scenario")
    parser.add_argument(
        "--idle-hold-s", type=float, default=0.0, help="keep the idle sockets open this long"
    )
    parser.add_argument(
        "--idle-ping-s", type=float, default=30.0, help="each idle socket pings this often"
    )
    parser.add_argument(
        "--idle-clients", type=int, default=2, help="client processes opening the idle sockets"
    )
    parser.add_argument(
        "--scenarios",
        default="floor,direct,litellm,paced,saturation,idle",
        help="comma-separated subset of floor,direct,litellm,paced,saturation,idle",
    )
    args = parser.parse_args()
    scenarios = set(args.scenarios.split(","))
    gateway_ws = f"ws://127.0.0.1:{8000 + args.port_offset}"
    mock_url = f"http://127.0.0.1:{8009 + args.port_offset}"

    settings = ServiceSettings()
    # The same names `convoai up` gives the stack (services/runner.py plan_stack).
    stack = plan_stack(settings, "127.0.0.1", args.port_offset, args.stack)
    namespace = stack.namespace
    database = make_url(stack.database_url).database or ""
    processes = stack_processes(args.port_offset, database)
    gateway_pid = next(p for n, p in processes.items() if n.startswith("gateway"))
    cpu = CpuWindow(processes, rescan=lambda: stack_processes(args.port_offset, database))
    mock_settings = MockLLMSettings(**httpx.get(f"{mock_url}/_config").json())
    httpx.post(
        f"{mock_url}/_faults",
        json={
            "match": chat_load.FAST_MARK,
            "reply_tokens": chat_load.FAST_TOKENS,
            "tokens_per_second": 0,
            "ttft_ms": 0,
            "times": -1,
        },
    ).raise_for_status()
    result: dict[str, Any] = {
        "users": args.users,
        "load_average_at_start": os.getloadavg(),
        "processes": sorted(n for n in processes if not n.startswith("postgres backend")),
        "rss_mib_at_rest": memory_mib(processes),
        "database_at_start": await database_state(stack.database_url),
    }
    try:
        if "floor" in scenarios:
            result["broker_floor"] = await chat_load.broker_floor(
                settings.amqp_url, args.users, 500, 5.0
            )
        if "direct" in scenarios:
            result["direct_to_model"] = await direct_to_model(
                mock_url, args.users, args.duration, cpu
            )
        if "litellm" in scenarios:
            import litellm_proxy  # here, not at the top: it imports this module's client load

            result["through_litellm"] = await litellm_proxy.through_litellm(
                mock_url, args.users, args.duration
            )
        users = await chat_load.open_users(gateway_ws, args.users, settings)
        try:
            result["warm_up"] = await chat_load.warm_up(users, mock_settings)
            if "paced" in scenarios:
                result["paced"] = await chat_load.paced(
                    users, args.rate, args.duration, mock_settings
                )
            if "saturation" in scenarios:
                async with BrokerTap(settings.amqp_url, namespace) as tap:
                    result["saturation"], result["broker_per_turn"] = await measured_saturation(
                        users, args.duration, mock_settings, cpu, tap
                    )
            if "idle" in scenarios and args.idle_sockets:
                result["idle_sockets"] = await idle_sockets(
                    gateway_ws,
                    args.idle_sockets,
                    gateway_pid,
                    users[0],
                    mock_settings,
                    args.idle_hold_s,
                    args.idle_ping_s,
                    args.idle_clients,
                )
            result["errors"] = sum(len(u.errors) for u in users)
        finally:
            await asyncio.gather(*(u.close() for u in users), return_exceptions=True)
    finally:
        httpx.delete(f"{mock_url}/_faults")
    result["rss_mib_after"] = memory_mib(processes)
    result["load_average_at_end"] = os.getloadavg()
    print(json.dumps(result))


if __name__ == "__main__":
    # The client on uvloop too: opening 10 000 sockets costs it as much CPU as the gateway, on
    # the same two cores.
    uvloop.run(main())

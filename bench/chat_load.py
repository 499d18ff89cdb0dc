"""Chat load benchmark: drives a running local stack over WebSockets and prints one JSON object.

It starts nothing. Run the stack first, with the per-user message limit raised (virtual users
send faster than a person) and mock_llm as the model:

    CONVOAI_MESSAGES_PER_MINUTE=100000 CONVOAI_WS_FRAMES_PER_SECOND=1000 convoai up --workers 2
    .venv/bin/python bench/chat_load.py --users 50 --streams 500

Virtual users are synthetic accounts whose access tokens are signed with the stack's own JWT
settings (CONVOAI_JWT_SECRET etc., read from the environment / .env exactly as the services read
them): registering hundreds of accounts would measure argon2, not chat. The model's reply length
and pace are set per scenario through mock_llm's rules (`POST /_faults` with `match`), so the
same mock serves every scenario and each reply is checked against `expected_reply` exactly.

Scenarios, in one run (after two unmeasured warm-up turns per user):
- broker floor: aio-pika publish → consume → reply on the same RabbitMQ, sequential (latency)
  and with `--users` round trips in flight (rate);
- paced: `--users` users each send one message per second (`--rate`) for `--duration` s, zero
  model delay; client-measured time to first frame (`reply.started`) and to first text (the
  first `reply.delta`, or the terminal frame when the whole reply came with it);
- saturation: the same users send back to back (next message when the reply completed);
- streaming: `--streams` conversations each get one 200-token reply at 50 tokens/s at once;
  every reply must arrive complete, exact, with no lost, duplicated or reordered frame.

Over 400 lines on purpose: a benchmark is one script to run and read; its scenarios share the
virtual users and the exactness check.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import secrets
import statistics
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import httpx
import jwt
import orjson
from ws_client import TextSocket, connect

from services.mock_llm.service import expected_reply
from services.mock_llm.settings import MockLLMSettings
from shared.settings import ServiceSettings

FAST_MARK = "[bench-fast]"
STREAM_MARK = "[bench-stream]"
FAST_TOKENS = 24
STREAM_TOKENS = 200
STREAM_TOKENS_PER_SECOND = 50.0
TERMINAL = {"reply.completed", "reply.failed", "reply.cancelled"}


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return round(ordered[index], 2)


def summary_ms(values: list[float]) -> dict[str, float | int | None]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "mean": round(statistics.fmean(values), 2) if values else None,
    }


# --- the raw broker floor --------------------------------------------------------------------


async def broker_floor(amqp_url: str, concurrency: int, samples: int, duration_s: float) -> dict:
    """Round trips through RabbitMQ alone: publish → a consumer → reply → the sender."""
    connection = await aio_pika.connect_robust(amqp_url)
    async with connection:
        channel = await connection.channel()
        requests = await channel.declare_queue(exclusive=True, auto_delete=True)
        replies = await channel.declare_queue(exclusive=True, auto_delete=True)
        waiting: dict[str, asyncio.Future[None]] = {}

        async def echo(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await channel.default_exchange.publish(
                aio_pika.Message(message.body, correlation_id=message.correlation_id),
                routing_key=replies.name,
            )

        async def answered(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            future = waiting.pop(message.correlation_id or "", None)
            if future is not None and not future.done():
                future.set_result(None)

        await requests.consume(echo, no_ack=True)
        await replies.consume(answered, no_ack=True)
        body = json.dumps({"type": "send_message", "content": "x" * 64}).encode()

        async def round_trip() -> float:
            key = uuid.uuid4().hex
            future = asyncio.get_running_loop().create_future()
            waiting[key] = future
            started = time.perf_counter()
            await channel.default_exchange.publish(
                aio_pika.Message(body, correlation_id=key), routing_key=requests.name
            )
            await future
            return (time.perf_counter() - started) * 1000

        for _ in range(20):
            await round_trip()
        sequential = [await round_trip() for _ in range(samples)]

        done = 0
        deadline = time.perf_counter() + duration_s

        async def loop() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                await round_trip()
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "sequential_rtt_ms": summary_ms(sequential),
        "concurrency": concurrency,
        "round_trips_per_s": round(done / elapsed, 1),
    }


# --- virtual users ---------------------------------------------------------------------------


@dataclass
class ReplyRecord:
    """One user message and its reply, as the client saw it."""

    content: str
    sent_at: float
    message_id: str | None = None
    started_at: float | None = None
    first_text_at: float | None = None
    """When the first text arrived: a delta, or the terminal frame when the whole reply came
    with it (a fast model's reply leaves with the terminal frame)."""
    done_at: float | None = None
    frames: list[dict[str, Any]] = field(default_factory=list)
    frame_times: list[float] = field(default_factory=list)
    terminal: dict[str, Any] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class VirtualUser:
    """One socket, one conversation; frames are matched to messages by the server's ids.

    The socket is bench/ws_client.py's: each text message it receives is handed to `_received`
    from the socket's `data_received`, with no reader task or stream in between, as the client
    shares the machine's cores with the stack it measures (per turn, the `websockets` client this
    replaced spent twice as much CPU: a quarter to a third of the gateway's).
    """

    def __init__(self, socket: TextSocket, name: str) -> None:
        self.socket = socket
        self.name = name
        self.conversation_id = ""
        self.by_client_id: dict[str, ReplyRecord] = {}
        self.by_message_id: dict[str, ReplyRecord] = {}
        self.early: dict[str, list[tuple[float, dict[str, Any]]]] = {}
        self.errors: list[dict[str, Any]] = []
        self._control: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        socket.listen(self._received)

    def _received(self, raw: bytes) -> None:
        now = time.perf_counter()
        frame = orjson.loads(raw)
        kind = frame.get("type")
        if kind == "ack":
            record = self.by_client_id[frame["client_message_id"]]
            record.message_id = frame["message_id"]
            self.by_message_id[record.message_id] = record
            for at, early in self.early.pop(record.message_id, []):
                self._on_reply_frame(record, at, early)
        elif kind and kind.startswith("reply."):
            reply_to = frame.get("reply_to")
            answered = self.by_message_id.get(reply_to or "")
            if answered is None:
                # The reply can overtake the ack: the worker is that fast.
                self.early.setdefault(reply_to or "", []).append((now, frame))
            else:
                self._on_reply_frame(answered, now, frame)
        elif kind == "error":
            self.errors.append(frame)
        else:
            self._control.put_nowait(frame)

    def _on_reply_frame(self, record: ReplyRecord, at: float, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        if kind == "reply.started" and record.started_at is None:
            record.started_at = at
        if record.first_text_at is None and (frame.get("delta") or frame.get("content")):
            record.first_text_at = at
        record.frames.append(frame)
        record.frame_times.append(at)
        if kind in TERMINAL:
            record.terminal = frame
            record.done_at = at
            record.done.set()

    async def expect(self, kind: str, timeout_s: float = 30) -> dict[str, Any]:
        while True:
            frame = await asyncio.wait_for(self._control.get(), timeout_s)
            if frame.get("type") == kind:
                return frame

    async def start(self, token: str) -> None:
        self.socket.send_text(orjson.dumps({"type": "auth", "token": token}))
        await self.expect("ready")
        self.socket.send_text(orjson.dumps({"type": "start_conversation", "title": self.name}))
        self.conversation_id = (await self.expect("conversation.started"))["conversation_id"]

    async def send(self, content: str) -> ReplyRecord:
        client_id = secrets.token_hex(8)
        record = ReplyRecord(content=content, sent_at=time.perf_counter())
        self.by_client_id[client_id] = record
        self.socket.send_text(
            orjson.dumps(
                {
                    "type": "send_message",
                    "conversation_id": self.conversation_id,
                    "content": content,
                    "client_message_id": client_id,
                }
            )
        )
        return record

    async def close(self) -> None:
        await self.socket.close()


def access_token(settings: ServiceSettings, user_id: str) -> str:
    now = datetime.now(UTC)
    claims = {
        "sub": user_id,
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "iat": int(now.timestamp()),
        "nbf": int(now.timestamp()),
        "exp": int((now + timedelta(hours=2)).timestamp()),
        "jti": secrets.token_hex(8),
        "typ": "access",
        "username": user_id,
        "roles": ["user"],
    }
    return jwt.encode(claims, settings.jwt_secret, algorithm=settings.jwt_algorithm)


async def open_users(gateway_ws: str, count: int, settings: ServiceSettings) -> list[VirtualUser]:
    run = secrets.token_hex(3)

    async def one(index: int) -> VirtualUser:
        socket = await connect(f"{gateway_ws}/ws", timeout=30, max_size=2**22)
        user = VirtualUser(socket, f"bench-{run}-{index}")
        await user.start(access_token(settings, f"bench{run}{index:05d}"[:16]))
        return user

    users: list[VirtualUser] = []
    for batch in range(0, count, 50):
        users += await asyncio.gather(*(one(i) for i in range(batch, min(count, batch + 50))))
    return users


# --- checking replies ------------------------------------------------------------------------


@dataclass
class Verdict:
    complete: int = 0
    failed: int = 0
    missing: int = 0
    inexact: int = 0
    frame_errors: int = 0
    """Replies whose frames were lost, duplicated or out of order."""
    retried: int = 0
    """Complete replies the worker had to retry (a `reply.retrying` notice went by)."""


def check(records: list[ReplyRecord], mock: MockLLMSettings, tokens: int) -> Verdict:
    verdict = Verdict()
    for record in records:
        if record.terminal is None:
            verdict.missing += 1
            continue
        if record.terminal["type"] != "reply.completed":
            verdict.failed += 1
            continue
        verdict.complete += 1
        expected = expected_reply(
            [{"role": "user", "content": record.content}], mock, reply_tokens=tokens
        ).text
        attempt = record.terminal.get("attempt", 1)
        # `reply.retrying` is a notice, not a step of the reply: it repeats the current seq.
        verdict.retried += any(f["type"] == "reply.retrying" for f in record.frames)
        frames = [
            f
            for f in record.frames
            if f.get("attempt", 1) == attempt and f["type"] != "reply.retrying"
        ]
        seqs = [f["seq"] for f in frames]
        if seqs != list(range(len(frames))) or frames[0]["type"] != "reply.started":
            verdict.frame_errors += 1
        # Deltas stream a prefix of the reply; the terminal frame's `content` is all of it
        # (with the tail that was still pending when the model's stream ended).
        streamed = "".join(f.get("delta", "") for f in frames if f["type"] == "reply.delta")
        content = record.terminal.get("content")
        if content != expected or not expected.startswith(streamed):
            verdict.inexact += 1
    return verdict


def latencies(records: list[ReplyRecord]) -> dict[str, Any]:
    return {
        "time_to_first_frame_ms": summary_ms(
            [(r.started_at - r.sent_at) * 1000 for r in records if r.started_at is not None]
        ),
        "time_to_first_token_ms": summary_ms(
            [(r.first_text_at - r.sent_at) * 1000 for r in records if r.first_text_at]
        ),
        "time_to_complete_ms": summary_ms(
            [(r.done_at - r.sent_at) * 1000 for r in records if r.done_at is not None]
        ),
    }


async def wait_all(records: list[ReplyRecord], timeout_s: float) -> None:
    pending = [asyncio.create_task(r.done.wait()) for r in records if not r.done.is_set()]
    if pending:
        _, still = await asyncio.wait(pending, timeout=timeout_s)
        for task in still:
            task.cancel()


# --- scenarios -------------------------------------------------------------------------------


def client_cpu_ms() -> float:
    """CPU-ms (user + system) this process has spent so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return (usage.ru_utime + usage.ru_stime) * 1000


async def warm_up(users: list[VirtualUser], mock: MockLLMSettings) -> dict[str, Any]:
    """Two unmeasured turns per user first: pooled connections (database, model HTTP) are
    opened and code paths are warm before anything is timed, as the broker floor's are."""
    records: list[ReplyRecord] = []
    for n in range(2):
        sent = [await user.send(f"{FAST_MARK} {user.name} warm-up {n}") for user in users]
        await wait_all(sent, 30)
        records += sent
    return {"turns": len(records), "check": vars(check(records, mock, FAST_TOKENS))}


async def paced(users: list[VirtualUser], rate: float, duration_s: float, mock: MockLLMSettings):
    records: list[ReplyRecord] = []
    interval = 1.0 / rate
    started = time.perf_counter()

    async def run(user: VirtualUser, offset: float) -> None:
        await asyncio.sleep(offset)
        n = 0
        while True:
            due = started + offset + n * interval
            if due - started >= duration_s:
                return
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            records.append(await user.send(f"{FAST_MARK} {user.name} paced {n}"))
            n += 1

    # Users are spread over the first interval, as real users would be.
    await asyncio.gather(*(run(u, i * interval / len(users)) for i, u in enumerate(users)))
    await wait_all(records, 30)
    elapsed = time.perf_counter() - started
    return {
        "offered_turns_per_s": round(len(users) * rate, 1),
        "turns_per_s": round(sum(r.done_at is not None for r in records) / elapsed, 1),
        **latencies(records),
        "check": vars(check(records, mock, FAST_TOKENS)),
    }


async def saturation(users: list[VirtualUser], duration_s: float, mock: MockLLMSettings):
    records: list[ReplyRecord] = []
    deadline = time.perf_counter() + duration_s

    async def run(user: VirtualUser) -> None:
        n = 0
        while time.perf_counter() < deadline:
            record = await user.send(f"{FAST_MARK} {user.name} back-to-back {n}")
            records.append(record)
            n += 1
            try:
                async with asyncio.timeout(30):  # no task per turn, as wait_for's
                    await record.done.wait()
            except TimeoutError:
                return

    started = time.perf_counter()
    cpu_before = client_cpu_ms()
    await asyncio.gather(*(run(u) for u in users))
    client_cpu = client_cpu_ms() - cpu_before
    elapsed = time.perf_counter() - started
    verdict = check(records, mock, FAST_TOKENS)
    turns = verdict.complete + verdict.failed
    return {
        "concurrency": len(users),
        "turns_per_s": round(sum(r.done_at is not None for r in records) / elapsed, 1),
        **latencies(records),
        # This process's CPU (the virtual users, and whatever else runs on its event loop) per
        # turn: it shares the machine's cores with the stack it measures.
        "client_cpu_ms_per_turn": round(client_cpu / turns, 3) if turns else None,
        "check": vars(verdict),
    }


async def streaming(users: list[VirtualUser], mock: MockLLMSettings):
    started = time.perf_counter()
    records = await asyncio.gather(*(u.send(f"{STREAM_MARK} {u.name} stream") for u in users))
    expected_s = STREAM_TOKENS / STREAM_TOKENS_PER_SECOND
    await wait_all(list(records), expected_s * 4 + 30)
    elapsed = time.perf_counter() - started
    frames = sum(len(r.frames) for r in records)
    gaps = [
        (b - a) * 1000
        for r in records
        for a, b in zip(r.frame_times, r.frame_times[1:], strict=False)
    ]
    verdict = check(list(records), mock, STREAM_TOKENS)
    return {
        "conversations": len(users),
        "all_complete_and_exact": verdict.complete == len(users)
        and verdict.inexact == 0
        and verdict.frame_errors == 0,
        "frames_per_s": round(frames / elapsed, 1),
        "inter_frame_delay_ms": summary_ms(gaps),
        **latencies(list(records)),
        "check": vars(verdict),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--gateway", default="ws://127.0.0.1:8000", help="gateway WebSocket URL")
    parser.add_argument("--mock-llm", default="http://127.0.0.1:8009", help="mock_llm URL")
    parser.add_argument("--users", type=int, default=50, help="virtual users (one socket each)")
    parser.add_argument("--rate", type=float, default=1.0, help="messages/s per paced user")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per scenario")
    parser.add_argument(
        "--streams", type=int, default=500, help="concurrent conversations when streaming"
    )
    parser.add_argument(
        "--scenarios",
        default="paced,saturation,streaming",
        help="comma-separated subset of paced,saturation,streaming",
    )
    args = parser.parse_args()
    scenarios = set(args.scenarios.split(","))

    settings = ServiceSettings()
    mock_settings = MockLLMSettings(**httpx.get(f"{args.mock_llm}/_config").json())
    rules = [
        {"match": FAST_MARK, "reply_tokens": FAST_TOKENS, "tokens_per_second": 0, "ttft_ms": 0},
        {
            "match": STREAM_MARK,
            "reply_tokens": STREAM_TOKENS,
            "tokens_per_second": STREAM_TOKENS_PER_SECOND,
            "ttft_ms": 0,
        },
    ]
    for rule in rules:
        httpx.post(f"{args.mock_llm}/_faults", json={**rule, "times": -1}).raise_for_status()
    result: dict[str, Any] = {"users": args.users}
    try:
        result["broker_floor"] = await broker_floor(settings.amqp_url, args.users, 500, 5.0)
        wanted = max(args.users, args.streams if "streaming" in scenarios else 0)
        users = await open_users(args.gateway, wanted, settings)
        try:
            chatting = users[: args.users]
            result["warm_up"] = await warm_up(chatting, mock_settings)
            if "paced" in scenarios:
                result["paced"] = await paced(chatting, args.rate, args.duration, mock_settings)
            if "saturation" in scenarios:
                result["saturation"] = await saturation(chatting, args.duration, mock_settings)
            if "streaming" in scenarios:
                result["streaming"] = await streaming(users[: args.streams], mock_settings)
            result["errors"] = sum(len(u.errors) for u in users)
            result["error_codes"] = sorted({e.get("code", "") for u in users for e in u.errors})
        finally:
            await asyncio.gather(*(u.close() for u in users), return_exceptions=True)
    finally:
        httpx.delete(f"{args.mock_llm}/_faults")
    floor = result["broker_floor"]
    rtt = floor["sequential_rtt_ms"]
    versus: dict[str, float] = {}
    if "paced" in result and result["paced"]["time_to_first_frame_ms"]["n"]:
        ttff = result["paced"]["time_to_first_frame_ms"]
        versus["paced_ttff_p50_minus_rtt_p50_ms"] = round(ttff["p50"] - rtt["p50"], 2)
        versus["paced_ttff_p99_minus_rtt_p99_ms"] = round(ttff["p99"] - rtt["p99"], 2)
    if "saturation" in result:
        versus["saturation_turns_per_s_over_floor_rate"] = round(
            result["saturation"]["turns_per_s"] / floor["round_trips_per_s"], 3
        )
    result["vs_broker_floor"] = versus
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())

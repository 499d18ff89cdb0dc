"""Analytics benchmark: ingestion rate with idempotency on, dashboard latency at 1M replies.

Runs against the local RabbitMQ and PostgreSQL in a throwaway database and namespace, with a
real `convoai serve analytics_consumer` process. Steps:
1. seed 1 000 000 stored replies (and their rollups, and 2 000 000 processed event ids, so the
   idempotency index is as large as it would be in a live system) with generate_series;
2. live ingestion: publish a synthetic mix of events (with ~3% duplicates) to `<ns>.events`
   while the consumer runs; report events/s from the first publish to the last commit;
3. backlog drain: with the consumer stopped, queue another batch, start it, report events/s;
   then the same amount drained by a consumer that does nothing: what RabbitMQ alone delivers
   on this machine at that moment (the ceiling for the numbers above);
4. latency of `summary` and `daily-stats` over HTTP, p50/p95.

Prints one JSON object. Not a test: numbers depend on the machine and its load.

    .venv/bin/python bench/analytics_ingest.py [--events 30000] [--replies 1000000]

Over 400 lines on purpose: one script to run and read; its phases share the seeded stack.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiormq
import asyncpg
import httpx
import jwt
from sqlalchemy.engine import make_url

from shared.broker import create_broker, declare_topology, delete_topology
from shared.db import asyncpg_dsn
from shared.events import (
    ConversationCreated,
    Event,
    HttpRequestCompleted,
    HttpRequestRecord,
    MessageSent,
    ReplyCompleted,
    ReplyFailed,
    ReplyStarted,
    UserLoggedIn,
)
from shared.migrations import upgrade_to_head
from shared.topology import Topology

SERVER_URL = os.environ.get(
    "CONVOAI_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
AMQP_URL = os.environ.get("CONVOAI_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
MODELS = ["gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "mock-gpt"]


# --- seeding -----------------------------------------------------------------------------------

SEED_SQL = """
INSERT INTO analytics.replies (message_id, event_id, conversation_id, user_id, reply_to, model,
    status, prompt_tokens, completion_tokens, cost_usd, price_known, ttft_ms, duration_ms,
    finish_reason, error_code, occurred_at)
SELECT 'seed-r' || g, gen_random_uuid(), 'seed-c' || (g % 50000), 'seed-u' || (g % 2000),
       'seed-m' || g, (ARRAY['gpt-4o-mini','gpt-4o','gpt-4.1-mini','mock-gpt'])[1 + g % 4],
       CASE WHEN g % 40 = 0 THEN 'failed' ELSE 'completed' END,
       100 + g % 900, 20 + g % 480, 0, true,
       CASE WHEN g % 40 = 0 THEN NULL ELSE 50 + (g::bigint * 7919) % 2950 END,
       200 + (g::bigint * 104729) % 9800, 'stop', NULL,
       now() - make_interval(days => g % 90, secs => g % 86400)
FROM generate_series(1, $1::int) AS g;

UPDATE analytics.replies SET cost_usd = CASE model
    WHEN 'gpt-4o-mini' THEN (prompt_tokens * 0.15 + completion_tokens * 0.60) / 1e6
    WHEN 'gpt-4o' THEN (prompt_tokens * 2.50 + completion_tokens * 10.0) / 1e6
    WHEN 'gpt-4.1-mini' THEN (prompt_tokens * 0.40 + completion_tokens * 1.60) / 1e6
    ELSE 0 END, price_known = model <> 'mock-gpt'
WHERE message_id LIKE 'seed-r%';

INSERT INTO analytics.processed_events (event_id, event_type)
SELECT gen_random_uuid(), 'seed' FROM generate_series(1, 2 * $1::int);
"""

ROLLUP_SQL = [
    """
    INSERT INTO analytics.daily_user_stats (day, user_id, user_messages, replies, prompt_tokens,
        completion_tokens, cost_usd)
    SELECT (occurred_at AT TIME ZONE 'UTC')::date, user_id, count(*), count(*),
           sum(prompt_tokens), sum(completion_tokens), sum(cost_usd)
    FROM analytics.replies WHERE message_id LIKE 'seed-r%' GROUP BY 1, 2
    """,
    """
    INSERT INTO analytics.daily_stats (day, active_users, conversations_created, user_messages,
        replies_completed, replies_failed, prompt_tokens, completion_tokens, cost_usd,
        reply_duration_ms_total, ttft_ms_total)
    SELECT r.day, u.active, r.conversations, r.messages, r.completed, r.failed, r.prompt,
           r.completion, r.cost, r.duration, r.ttft
    FROM (
        SELECT (occurred_at AT TIME ZONE 'UTC')::date AS day, count(*) AS messages,
               count(DISTINCT conversation_id) AS conversations,
               count(*) FILTER (WHERE status = 'completed') AS completed,
               count(*) FILTER (WHERE status = 'failed') AS failed,
               sum(prompt_tokens) AS prompt, sum(completion_tokens) AS completion,
               sum(cost_usd) AS cost,
               coalesce(sum(duration_ms) FILTER (WHERE status = 'completed'), 0) AS duration,
               coalesce(sum(ttft_ms) FILTER (WHERE status = 'completed'), 0) AS ttft
        FROM analytics.replies WHERE message_id LIKE 'seed-r%' GROUP BY 1
    ) r JOIN (
        SELECT day, count(*) AS active FROM analytics.daily_user_stats GROUP BY day
    ) u USING (day)
    """,
    """
    INSERT INTO analytics.daily_model_stats (day, model, replies_completed, replies_failed,
        unpriced_replies, prompt_tokens, completion_tokens, cost_usd, reply_duration_ms_total,
        ttft_ms_total)
    SELECT (occurred_at AT TIME ZONE 'UTC')::date, model,
           count(*) FILTER (WHERE status = 'completed'), count(*) FILTER (WHERE status = 'failed'),
           count(*) FILTER (WHERE NOT price_known), sum(prompt_tokens), sum(completion_tokens),
           sum(cost_usd), coalesce(sum(duration_ms) FILTER (WHERE status = 'completed'), 0),
           coalesce(sum(ttft_ms) FILTER (WHERE status = 'completed'), 0)
    FROM analytics.replies WHERE message_id LIKE 'seed-r%' GROUP BY 1, 2
    """,
    """
    INSERT INTO analytics.ttft_histogram (model, bucket_ms, replies)
    SELECT model, round(ttft_ms)::int, count(*) FROM analytics.replies
    WHERE status = 'completed' AND message_id LIKE 'seed-r%' GROUP BY 1, 2
    """,
    """
    INSERT INTO analytics.ttft_histogram (model, bucket_ms, replies)
    SELECT '*', round(ttft_ms)::int, count(*) FROM analytics.replies
    WHERE status = 'completed' AND message_id LIKE 'seed-r%' GROUP BY 2
    """,
    """
    INSERT INTO analytics.users (user_id, username, first_seen_at, last_seen_at, user_messages,
        replies, prompt_tokens, completion_tokens, cost_usd)
    SELECT user_id, 'seed-' || user_id, min(occurred_at), max(occurred_at), count(*), count(*),
           sum(prompt_tokens), sum(completion_tokens), sum(cost_usd)
    FROM analytics.replies WHERE message_id LIKE 'seed-r%' GROUP BY user_id
    """,
    """
    INSERT INTO analytics.conversations (conversation_id, user_id, model, started_at,
        created_at, last_activity_at, user_messages, replies_completed, replies_failed,
        prompt_tokens, completion_tokens, cost_usd, reply_duration_ms_total, ttft_ms_total)
    SELECT conversation_id, min(user_id), min(model), min(occurred_at), min(occurred_at),
           max(occurred_at), count(*), count(*) FILTER (WHERE status = 'completed'),
           count(*) FILTER (WHERE status = 'failed'), sum(prompt_tokens), sum(completion_tokens),
           sum(cost_usd), coalesce(sum(duration_ms) FILTER (WHERE status = 'completed'), 0),
           coalesce(sum(ttft_ms) FILTER (WHERE status = 'completed'), 0)
    FROM analytics.replies WHERE message_id LIKE 'seed-r%' GROUP BY conversation_id
    """,
]


async def seed(database_url: str, replies: int) -> float:
    started = time.perf_counter()
    conn = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        for statement in SEED_SQL.split(";\n"):
            if "$1" in statement:
                await conn.execute(statement, replies)
            elif statement.strip():
                await conn.execute(statement)
        for statement in ROLLUP_SQL:
            await conn.execute(statement)
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return time.perf_counter() - started


# --- synthetic events --------------------------------------------------------------------------


def synthetic_events(count: int, rng: random.Random) -> list[tuple[str, bytes]]:
    """A realistic mix: mostly chat turns, some logins, conversations and HTTP batches."""
    now = datetime.now(UTC)
    out: list[tuple[str, bytes]] = []
    turn = 0
    while len(out) < count:
        user = f"bench-u{rng.randrange(500)}"
        conversation = f"bench-c{rng.randrange(5000)}"
        roll = rng.random()
        turn += 1
        moment = now - timedelta(seconds=rng.randrange(86400))
        events: list[Event]
        if roll < 0.70:
            model = rng.choice(MODELS)
            events = [
                MessageSent(
                    producer="gateway",
                    user_id=user,
                    conversation_id=conversation,
                    message_id=f"bm{turn}",
                    content_length=40,
                    occurred_at=moment,
                ),
                ReplyStarted(
                    producer="chat_worker",
                    user_id=user,
                    conversation_id=conversation,
                    message_id=f"br{turn}",
                    reply_to=f"bm{turn}",
                    model=model,
                    occurred_at=moment,
                ),
            ]
            if rng.random() < 0.97:
                events.append(
                    ReplyCompleted(
                        producer="chat_worker",
                        user_id=user,
                        conversation_id=conversation,
                        message_id=f"br{turn}",
                        reply_to=f"bm{turn}",
                        model=model,
                        prompt_tokens=rng.randrange(50, 2000),
                        completion_tokens=rng.randrange(10, 800),
                        ttft_ms=rng.uniform(40, 1500),
                        duration_ms=rng.uniform(300, 8000),
                        finish_reason="stop",
                        occurred_at=moment,
                    )
                )
            else:
                events.append(
                    ReplyFailed(
                        producer="chat_worker",
                        user_id=user,
                        conversation_id=conversation,
                        message_id=f"br{turn}",
                        reply_to=f"bm{turn}",
                        model=model,
                        error_code="upstream_error",
                        occurred_at=moment,
                    )
                )
        elif roll < 0.80:
            events = [UserLoggedIn(producer="auth", user_id=user, username=user, ip="10.1.2.3")]
        elif roll < 0.88:
            events = [
                ConversationCreated(
                    producer="gateway",
                    user_id=user,
                    conversation_id=f"{conversation}-{turn}",
                    model=rng.choice(MODELS),
                )
            ]
        else:
            events = [
                HttpRequestCompleted(
                    producer="gateway",
                    service="gateway",
                    requests=[
                        HttpRequestRecord(
                            route=rng.choice(
                                [
                                    "/conversations/",
                                    "/conversations/{conversation_id}",
                                    "/conversations/{conversation_id}/messages",
                                    "/assistants/",
                                ]
                            ),
                            method=rng.choice(["GET", "POST"]),
                            status=rng.choice([200, 200, 200, 201, 404, 500]),
                            duration_ms=rng.uniform(1, 80),
                        )
                        for _ in range(20)
                    ],
                )
            ]
        for event in events:
            body = event.model_dump_json().encode()
            out.append((event.type, body))
            if rng.random() < 0.03:
                out.append((event.type, body))  # a duplicate delivery, same event id
    return out[:count]


async def publish(
    amqp_url: str, exchange: str, items: list[tuple[str, bytes]], publishers: int = 1
) -> float:
    """Publish with confirms from `publishers` connections, a window in flight on each."""

    async def one(share: list[tuple[str, bytes]]) -> None:
        connection = await aiormq.connect(amqp_url)
        channel = await connection.channel(publisher_confirms=True)
        properties = aiormq.spec.Basic.Properties(delivery_mode=2, content_type="application/json")
        window = 1000
        for start in range(0, len(share), window):
            await asyncio.gather(
                *(
                    channel.basic_publish(
                        body, exchange=exchange, routing_key=key, properties=properties
                    )
                    for key, body in share[start : start + window]
                )
            )
        await connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(one(items[i::publishers]) for i in range(publishers)))
    return time.perf_counter() - started


def unique_count(items: list[tuple[str, bytes]]) -> int:
    return len({json.loads(body)["event_id"] for _, body in items})


# --- the consumer process ----------------------------------------------------------------------


class Consumers:
    """`count` replicas of the consumer process; the first one also answers the latency probes."""

    def __init__(self, env: dict[str, str], port: int, count: int) -> None:
        self.replicas = [Consumer(env, port + i) for i in range(count)]

    def start(self) -> None:
        for replica in self.replicas:
            replica.start()

    def stop(self) -> None:
        for replica in self.replicas:
            replica.stop()


class Consumer:
    def __init__(self, env: dict[str, str], port: int) -> None:
        self.env, self.port = env, port
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = Path(tempfile.mkstemp(prefix="bench-analytics-", suffix=".log")[1])

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.cli",
                "serve",
                "analytics_consumer",
                "--port",
                str(self.port),
            ],
            env=self.env,
            stdout=self.log_path.open("ab"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"analytics consumer exited; see {self.log_path}"
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError("analytics consumer did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


async def broker_ceiling(amqp_url: str, queue: str, count: int) -> float:
    """Events/s RabbitMQ alone delivers from the queue right now (consumer that does nothing)."""
    connection = await aiormq.connect(amqp_url)
    channel = await connection.channel()
    await channel.basic_qos(prefetch_count=3000)
    received: list[int] = []
    done = asyncio.Event()

    async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
        received.append(message.delivery_tag or 0)
        if len(received) >= count:
            done.set()

    started = time.perf_counter()
    await channel.basic_consume(queue, on_message)
    acked = 0
    while not done.is_set():
        await asyncio.sleep(0.02)
        if len(received) > acked:
            acked = len(received)
            await channel.basic_ack(received[acked - 1], multiple=True)
    elapsed = time.perf_counter() - started
    await channel.basic_ack(received[-1], multiple=True)
    await connection.close()
    return count / elapsed


async def ingested(conn: asyncpg.Connection) -> int:
    value = await conn.fetchval(
        "SELECT value FROM analytics.system_metrics WHERE name = 'events_ingested'"
    )
    return int(value or 0)


async def wait_ingested(conn: asyncpg.Connection, target: int, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while (current := await ingested(conn)) < target:
        if time.monotonic() > deadline:
            raise TimeoutError(f"ingested {current} of {target}")
        await asyncio.sleep(0.02)
    return time.perf_counter()


def latency(url: str, token: str, path: str, requests: int) -> dict[str, float]:
    samples = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client:
        for _ in range(5):
            client.get(path).raise_for_status()
        for _ in range(requests):
            started = time.perf_counter()
            client.get(path).raise_for_status()
            samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return {
        "p50_ms": round(statistics.median(samples), 2),
        "p95_ms": round(samples[int(0.95 * len(samples)) - 1], 2),
        "max_ms": round(samples[-1], 2),
        "requests": requests,
    }


def admin_token(secret: str) -> str:
    now = datetime.now(UTC)
    return jwt.encode(
        {
            "sub": "bench-admin",
            "username": "bench",
            "roles": ["admin"],
            "iss": "convoai-auth",
            "aud": "convoai",
            "iat": now,
            "nbf": now,
            "exp": now + timedelta(hours=1),
            "jti": uuid.uuid4().hex,
            "typ": "access",
        },
        secret,
        algorithm="HS256",
    )


async def main(args: argparse.Namespace) -> dict[str, Any]:
    run = secrets.token_hex(4)
    database = f"convoai_bench_{run}"
    database_url = make_url(SERVER_URL).set(database=database).render_as_string(hide_password=False)
    namespace = f"bench{run}"
    topology = Topology(namespace)
    secret = secrets.token_urlsafe(48)
    admin = await asyncpg.connect(asyncpg_dsn(SERVER_URL, "postgres"))
    await admin.execute(f'CREATE DATABASE "{database}"')
    consumer: Consumers | None = None
    result: dict[str, Any] = {}
    try:
        await upgrade_to_head(database_url, {"analytics": "services.analytics_consumer"})
        result["seed_s"] = round(await seed(database_url, args.replies), 1)
        result["seeded_replies"] = args.replies
        broker = create_broker(AMQP_URL)
        await broker.connect()
        await declare_topology(broker, topology)
        await broker.stop()

        port = 18000 + random.randrange(1000)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONVOAI_")}
        env.update(
            CONVOAI_ENVIRONMENT="test",
            CONVOAI_DATABASE_URL=database_url,
            CONVOAI_AMQP_URL=AMQP_URL,
            CONVOAI_NAMESPACE=namespace,
            CONVOAI_JWT_SECRET=secret,
            CONVOAI_LOG_LEVEL="WARNING",
            CONVOAI_HTTP_METRICS_ENABLED="false",
        )
        consumer = Consumers(env, port, args.consumers)
        consumer.start()
        db = await asyncpg.connect(asyncpg_dsn(database_url, database))
        rng = random.Random(42)

        live = synthetic_events(args.events, rng)
        live_unique = unique_count(live)
        started = time.perf_counter()
        publish_s = await publish(AMQP_URL, topology.events.name, live, args.publishers)
        done = await wait_ingested(db, live_unique, 600)
        result["live"] = {
            "publishers": args.publishers,
            "events_published": len(live),
            "unique_events": live_unique,
            "publish_events_per_s": round(len(live) / publish_s),
            "ingest_events_per_s": round(len(live) / (done - started)),
        }

        consumer.stop()
        backlog = synthetic_events(args.events, rng)
        backlog_unique = unique_count(backlog)
        await publish(AMQP_URL, topology.events.name, backlog)
        consumer.start()
        started = time.perf_counter()
        done = await wait_ingested(db, live_unique + backlog_unique, 600)
        result["backlog_drain"] = {
            "events": len(backlog),
            "ingest_events_per_s": round(len(backlog) / (done - started)),
        }
        # What the broker alone can deliver at this moment, to read the numbers above against.
        consumer.stop()
        probe = synthetic_events(args.events, rng)
        await publish(AMQP_URL, topology.events.name, probe)
        result["broker_only_events_per_s"] = round(
            await broker_ceiling(AMQP_URL, topology.analytics_events.name, len(probe))
        )
        consumer.start()
        result["stored_replies"] = await db.fetchval("SELECT count(*) FROM analytics.replies")
        result["processed_event_ids"] = await db.fetchval(
            "SELECT count(*) FROM analytics.processed_events"
        )
        await db.close()

        url = f"http://127.0.0.1:{port}/api/v1/analytics"
        token = admin_token(secret)
        result["summary"] = latency(url, token, "/summary", args.requests)
        result["daily_stats_30d"] = latency(url, token, "/daily-stats?days=30", args.requests)
        result["daily_stats_366d"] = latency(url, token, "/daily-stats?days=366", args.requests)
        result["models"] = latency(url, token, "/models", args.requests)
        result["machine"] = {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)}
        result["settings"] = {
            "consumers": args.consumers,
            "batch_max_events": 500,
            "batch_window_ms": 50,
            "prefetch": 3000,
        }
    finally:
        if consumer is not None:
            consumer.stop()
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()
        await delete_topology(AMQP_URL, topology)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--events", type=int, default=30_000, help="events per ingestion phase")
    parser.add_argument("--replies", type=int, default=1_000_000, help="stored replies to seed")
    parser.add_argument("--requests", type=int, default=200, help="requests per latency probe")
    parser.add_argument(
        "--publishers", type=int, default=1, help="publishing connections in the live phase"
    )
    parser.add_argument("--consumers", type=int, default=1, help="consumer processes (replicas)")
    print(json.dumps(asyncio.run(main(parser.parse_args()))))

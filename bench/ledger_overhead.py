"""What the budget ledger adds to each request, measured on the database the statements run on.

Per request the ledger costs two clauses in statements that exist anyway: admission in the
gateway's message statement (rate, tokens/day, cost/month for the user, and the key when there
is one, plus the reservation row) and settlement in the worker's final-reply statement. Timed
here one after the other on one driver connection in autocommit, as the hot path runs them:

- `message`: the message statement without admission (what it was before budgets) vs. with it,
  for a user, and for a user with an API key (twice the counter rows); every subject has
  limits, so every condition is evaluated;
- `settle`: a statement deleting one reservation and charging it (the clause the worker's final
  statement includes) vs. the same statement without the clause (half of the reservations also
  charge a key).

Prints one JSON object (milliseconds, median and mean). Not a test: numbers depend on the
machine and its load.

    .venv/bin/python bench/ledger_overhead.py [--samples 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

from services.budgets.admission import Admission
from services.budgets.ledger import SETTLE_CTE
from services.budgets.pricing import PricingSettings
from services.gateway import repository
from services.registry import MIGRATED_SCHEMAS
from shared.db import asyncpg_dsn
from shared.events import MessageSent
from shared.ids import IdKind, new_id
from shared.migrations import upgrade_to_head
from shared.outbox import StagedEvent

SERVER_URL = os.environ.get(
    "CONVOAI_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
MODEL = "gpt-4o-mini"
PRICES = PricingSettings().price_table().as_sql_json()

WITHOUT_ADMISSION = repository.store_statement(with_admission=False)
WITH_ADMISSION = repository.store_statement()
SETTLE = f"""
WITH finished AS (SELECT CAST($1 AS varchar) AS reply_to),
{SETTLE_CTE("finished", "CAST($2 AS integer)", "CAST($3 AS integer)")}
SELECT 1
"""
NO_SETTLE = "WITH finished AS (SELECT CAST($1 AS varchar) AS reply_to) SELECT $2::int + $3::int"


def summary(samples: list[float]) -> dict[str, float]:
    return {
        "p50": round(statistics.median(samples), 4),
        "mean": round(statistics.fmean(samples), 4),
    }


async def timed(call: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter()
    await call()
    return (time.perf_counter() - started) * 1000


async def measure(connection: asyncpg.Connection, samples: int) -> dict[str, Any]:
    user, key = new_id(IdKind.USER), new_id(IdKind.API_KEY)
    conversation = new_id(IdKind.CONVERSATION)
    await connection.execute(
        "INSERT INTO chat.conversations (id, owner_id, title, status, model) "
        "VALUES ($1, $2, 'bench', 'active', $3)",
        conversation,
        user,
        MODEL,
    )
    for subject in (user, key):
        await connection.execute(
            "INSERT INTO budgets.limits (subject_id, owner_id, requests_per_minute, "
            "tokens_per_day, cost_per_month_usd) VALUES ($1, $2, 1000000000, 1000000000000, 1e9)",
            subject,
            user,
        )

    reserved: list[str] = []

    def message(statement: str, admission: Admission | None) -> Callable[[], Awaitable[Any]]:
        message_id = new_id(IdKind.MESSAGE)
        event = StagedEvent.of(
            MessageSent(
                producer="bench",
                user_id=user,
                conversation_id=conversation,
                message_id=message_id,
                content_length=5,
            )
        )
        parameters: list[Any] = [conversation, user, message_id, None, "hello"]
        parameters += [*event.parameters(), MODEL]
        if admission is not None:
            parameters += admission.parameters(PRICES)
            reserved.append(message_id)
        return lambda: connection.fetchrow(statement, *parameters)

    times: dict[str, list[float]] = {
        name: []
        for name in ("plain", "admitted_user", "admitted_user_and_key", "settle", "no_settle")
    }
    for _ in range(samples):
        # Interleaved, so a drift of the machine's load touches all variants alike.
        times["plain"].append(await timed(message(WITHOUT_ADMISSION, None)))
        times["admitted_user"].append(
            await timed(message(WITH_ADMISSION, Admission(user, None, 10**9, 4026, 4096)))
        )
        times["admitted_user_and_key"].append(
            await timed(message(WITH_ADMISSION, Admission(user, key, 10**9, 4026, 4096)))
        )
    for message_id in reserved:  # half of them also charge a key
        times["no_settle"].append(
            await timed(lambda m=message_id: connection.fetchrow(NO_SETTLE, m, 100, 50))
        )
        times["settle"].append(
            await timed(lambda m=message_id: connection.fetchrow(SETTLE, m, 100, 50))
        )
    result: dict[str, Any] = {name: summary(values) for name, values in times.items()}
    plain = statistics.median(times["plain"])
    result["added_ms_p50"] = {
        "admission_user": round(statistics.median(times["admitted_user"]) - plain, 4),
        "admission_user_and_key": round(
            statistics.median(times["admitted_user_and_key"]) - plain, 4
        ),
        "settlement": round(
            statistics.median(times["settle"]) - statistics.median(times["no_settle"]), 4
        ),
    }
    return result


async def ledger_overhead(database_url: str, samples: int) -> dict[str, Any]:
    """Time the ledger's clauses on a migrated database (a conversation and limits of its own)."""
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        return {"samples": samples, **await measure(connection, samples)}
    finally:
        await connection.close()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--samples", type=int, default=1000, help="messages per variant")
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.infra import create_database, drop_database  # the same throwaway database helpers

    name = f"convoai_bench_{secrets.token_hex(4)}"
    database_url = await create_database(SERVER_URL, name)
    try:
        await upgrade_to_head(database_url, MIGRATED_SCHEMAS)
        result = await ledger_overhead(database_url, args.samples)
    finally:
        await drop_database(SERVER_URL, name)
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())

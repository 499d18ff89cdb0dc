"""Time-to-first-token percentiles are exact nearest-rank values, overall and per model."""

from __future__ import annotations

import math
import random
from datetime import UTC, date, datetime, time, timedelta

import pytest

from shared.events import ReplyCompleted
from tests.analytics_consumer.conftest import eventually

pytestmark = pytest.mark.e2e


def nearest_rank(values: list[float], percentile: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(percentile / 100 * len(ordered))) - 1]


def stored(ttft_ms: float) -> float:
    """What the histogram keeps: the millisecond below 10 s, 100 ms steps above."""
    if ttft_ms < 9_999.5:
        return float(math.floor(ttft_ms + 0.5))
    return float(int(ttft_ms // 100) * 100)


async def test_percentiles_match_a_reference_computation(stack):
    process = stack.start_consumer()
    rng = random.Random(3)
    by_model: dict[str, list[float]] = {"gpt-4o": [], "gpt-4o-mini": []}
    events = []
    for i in range(400):
        model = "gpt-4o" if i % 3 else "gpt-4o-mini"
        # Mostly sub-second, a tail of slow starts up to 40 s, spread over many 100 ms ranges.
        ttft = rng.uniform(20, 900) if rng.random() < 0.8 else rng.uniform(900, 40_000)
        by_model[model].append(stored(ttft))
        events.append(
            ReplyCompleted(
                producer="chat_worker",
                user_id="u-p",
                conversation_id="conv-p",
                message_id=f"r{i}",
                reply_to=f"m{i}",
                model=model,
                ttft_ms=ttft,
                duration_ms=ttft + 100,
            )
        )
    await stack.publish_all(events)
    await eventually(lambda: stack.ingested(len(events)))
    everything = by_model["gpt-4o"] + by_model["gpt-4o-mini"]
    with stack.client(process, "admin") as client:
        summary = client.get("/summary").json()
        models = {m["model"]: m for m in client.get("/models").json()["items"]}
    assert (summary["ttft_p50_ms"], summary["ttft_p95_ms"]) == (
        nearest_rank(everything, 50),
        nearest_rank(everything, 95),
    )
    for model, values in by_model.items():
        assert (models[model]["ttft_p50_ms"], models[model]["ttft_p95_ms"]) == (
            nearest_rank(values, 50),
            nearest_rank(values, 95),
        )


async def test_ttft_per_day_is_the_nearest_rank_of_that_days_replies(stack):
    process = stack.start_consumer()
    rng = random.Random(7)
    last = datetime.now(UTC).date() - timedelta(days=20)
    by_day: dict[date, list[float]] = {last: [], last - timedelta(days=1): []}
    events = []
    for i in range(120):
        day = last - timedelta(days=i % 2)
        ttft = round(rng.uniform(10, 3_000), 3)
        by_day[day].append(ttft)
        events.append(
            ReplyCompleted(
                producer="chat_worker",
                user_id="u-d",
                conversation_id="conv-d",
                message_id=f"rd{i}",
                reply_to=f"md{i}",
                model="gpt-4o",
                ttft_ms=ttft,
                duration_ms=ttft + 100,
                occurred_at=datetime.combine(day, time(12, 0), UTC),
            )
        )
    before = int(await stack.metric("events_ingested"))
    await stack.publish_all(events)
    await eventually(lambda: stack.ingested(before + len(events)))
    with stack.client(process, "admin") as client:
        rows = client.get("/ttft-daily", params={"days": 3, "end": last.isoformat()}).json()
    assert [row["date"] for row in rows["items"]] == [
        (last - timedelta(days=n)).isoformat() for n in range(3)
    ]
    for row in rows["items"][:2]:
        values = by_day[date.fromisoformat(row["date"])]
        assert row["replies"] == len(values)
        assert (row["ttft_p50_ms"], row["ttft_p95_ms"]) == (
            nearest_rank(values, 50),
            nearest_rank(values, 95),
        )
    assert rows["items"][2] == {
        "date": (last - timedelta(days=2)).isoformat(),
        "replies": 0,
        "ttft_p50_ms": None,
        "ttft_p95_ms": None,
    }

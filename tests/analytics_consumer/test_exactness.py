"""A known stream — shuffled, with duplicates and real broker redeliveries — gives exact numbers."""

from __future__ import annotations

import random
from datetime import UTC, datetime, time

import pytest

from shared.events import Event, ReplyCompleted, ReplyFailed
from tests.analytics_consumer.conftest import AnalyticsStack, eventually
from tests.analytics_consumer.scenario import ALICE, BOB, CAROL, Scenario, build, with_newer_version

pytestmark = pytest.mark.e2e

COST_MINI = (100 * 0.15 + 200 * 0.60 + 150 * 0.15 + 50 * 0.60) / 1e6
COST_4O = (1000 * 2.50 + 500 * 10.0 + 200 * 2.50 + 30 * 10.0) / 1e6


def _body(event: Event) -> bytes:
    if isinstance(event, ReplyCompleted) and event.message_id == "r4":
        return with_newer_version(event)
    return event.model_dump_json().encode()


def _stream(scenario: Scenario) -> list[tuple[str, bytes]]:
    """Every event once, shuffled, plus second copies of some (same event id)."""
    items = [(e.type, _body(e)) for e in scenario.events]
    items += [("user.teleported", scenario.unknown[0]), ("assistant.hummed", scenario.unknown[1])]
    duplicated = [
        e
        for e in scenario.events
        if getattr(e, "message_id", None) in ("r3", "m3")
        or (
            e.type == "user.logged_in"
            and e.occurred_at.date() == scenario.today
            and e.user_id == ALICE
        )
        or (e.type == "http.request.completed" and getattr(e, "service", "") == "gateway")
    ]
    items += [(e.type, _body(e)) for e in duplicated]
    items.append(("user.teleported", scenario.unknown[0]))
    random.Random(7).shuffle(items)
    return items


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return build(datetime.now(UTC).date())


@pytest.fixture(scope="module")
async def replayed(stack: AnalyticsStack, scenario: Scenario):
    stream = _stream(scenario)
    unique = len(scenario.events) + len(scenario.unknown)
    assert len(stream) - unique == 6
    for routing_key, body in stream:
        await stack.publish_raw(routing_key, body)
    # Deliveries that reach the consumer a second time, flagged `redelivered` by RabbitMQ.
    assert await stack.requeue_some(10) == 10
    process = stack.start_consumer()
    await eventually(
        lambda: stack.ingested(unique, duplicates=len(stream) - unique),
        message="the stream was not ingested exactly once",
    )
    return process, stream, unique


def test_summary_is_exact(stack, replayed, scenario):
    process, _, _ = replayed
    with stack.client(process, "admin") as client:
        assert_summary(client.get("/summary").json(), scenario)


def assert_summary(body: dict, scenario: Scenario) -> None:
    expected = {
        "total_users": 3,
        "active_users_today": 3,
        "total_conversations": 3,
        "total_messages": 11,
        "user_messages": 6,
        "assistant_messages": 5,
        "replies_completed": 4,
        "replies_failed": 1,
        "replies_cancelled": 1,
        "total_tokens": 2260,
        "prompt_tokens": 1460,
        "completion_tokens": 800,
        "total_api_calls": 5,
        "logins": 3,
        "failed_logins": 2,
        "ttft_p50_ms": 80.0,
        "ttft_p95_ms": 300.0,
    }
    assert {k: body[k] for k in expected} == expected
    assert body["total_cost_usd"] == pytest.approx(COST_MINI + COST_4O, abs=1e-9)
    assert body["avg_response_time"] == pytest.approx((900 + 500 + 2000 + 100) / 4)
    assert body["avg_ttft_ms"] == pytest.approx((120 + 80 + 300 + 10) / 4)
    assert body["avg_api_latency_ms"] == pytest.approx((10 + 20 + 5 + 50 + 70) / 5)
    assert body["error_rate"] == pytest.approx(1 / 5)
    assert body["reply_failure_rate"] == pytest.approx(1 / 6)
    assert body["system"]["unknown_events"] == 2
    assert body["system"]["unknown_events.user.teleported"] == 1
    assert body["system"].get("dead_lettered", 0) == 0


def test_users_top_list_and_activities_are_exact(stack, replayed, scenario):
    process, _, _ = replayed
    with stack.client(process, "manager") as client:
        by_messages = client.get("/users/top", params={"by": "messages"}).json()
        assert [(u["user_id"], u["user_messages"]) for u in by_messages["items"]] == [
            (ALICE, 4),
            (BOB, 2),
        ]
        assert by_messages["total"] == 2
        by_tokens = client.get("/users/top", params={"by": "tokens", "limit": 1}).json()
        assert [(u["username"], u["total_tokens"]) for u in by_tokens["items"]] == [("alice", 2230)]
        assert by_tokens["items"][0]["cost_usd"] == pytest.approx(COST_MINI + COST_4O, abs=1e-9)

        users = client.get("/users/list").json()
        assert users["total"] == 3
        by_id = {u["user_id"]: u for u in users["items"]}
        assert by_id[CAROL]["roles"] == ["user", "manager"]
        assert by_id[BOB]["is_active"] is False
        assert by_id[ALICE]["logins"] == 2
        assert by_id[ALICE]["conversations"] == 2
        active = client.get("/users/list", params={"active_only": "true"}).json()
        assert sorted(u["username"] for u in active["items"]) == ["alice", "carol"]
        assert active["total"] == 2

        activities = client.get("/users/activities").json()
        assert activities["total"] == 12
        kinds = sorted(a["activity_type"] for a in activities["items"])
        assert kinds.count("login") == 3 and kinds.count("login_failed") == 2
        alice = client.get("/users/activities", params={"user_id": ALICE}).json()
        assert sorted(a["activity_type"] for a in alice["items"]) == [
            "login",
            "login",
            "registration",
        ]
        assert {a["ip"] for a in alice["items"] if a["activity_type"] == "login"} == {
            "10.0.0.1",
            "10.0.0.2",
        }
        day = scenario.yesterday.isoformat()
        yesterday = client.get("/users/activities", params={"start": day, "end": day}).json()
        assert yesterday["total"] == 3
        page = client.get("/users/activities", params={"skip": 10, "limit": 5}).json()
        assert (len(page["items"]), page["total"]) == (2, 12)


def test_conversations_api_usage_and_models_are_exact(stack, replayed, scenario):
    process, _, _ = replayed
    with stack.client(process, "admin") as client:
        everything = client.get("/conversations").json()
        assert everything["total"] == 3
        c1 = next(c for c in everything["items"] if c["conversation_id"] == "conv-c1")
        assert (c1["user_messages"], c1["replies_completed"], c1["total_tokens"]) == (2, 2, 500)
        assert c1["avg_response_time_ms"] == pytest.approx(700)
        assert c1["cost_usd"] == pytest.approx(COST_MINI, abs=1e-9)
        today = scenario.today.isoformat()
        todays = client.get("/conversations", params={"start": today, "end": today}).json()
        assert sorted(c["conversation_id"] for c in todays["items"]) == ["conv-c2", "conv-c3"]
        c3 = next(c for c in todays["items"] if c["conversation_id"] == "conv-c3")
        assert (c3["replies_completed"], c3["replies_failed"]) == (1, 1)

        usage = client.get("/api-usage").json()
        assert usage["total"] == 4
        token = next(r for r in usage["items"] if r["route"] == "/auth/token")
        assert (token["service"], token["calls"], token["server_errors"]) == ("auth", 2, 1)
        assert token["avg_latency_ms"] == pytest.approx(60)
        assert token["max_latency_ms"] == pytest.approx(70)
        missing = next(
            r for r in usage["items"] if r["route"] == "/conversations/{conversation_id}"
        )
        assert (missing["calls"], missing["client_errors"]) == (1, 1)
        gateway = client.get("/api-usage", params={"service": "gateway"}).json()
        assert gateway["total"] == 3

        models = {m["model"]: m for m in client.get("/models").json()["items"]}
        assert set(models) == {"gpt-4o", "gpt-4o-mini", "mock-gpt"}
        assert (models["gpt-4o"]["replies_completed"], models["gpt-4o"]["replies_cancelled"]) == (
            1,
            1,
        )
        assert models["gpt-4o"]["total_tokens"] == 1730
        assert models["gpt-4o"]["cost_usd"] == pytest.approx(COST_4O, abs=1e-9)
        assert models["gpt-4o-mini"]["ttft_p50_ms"] == 80.0
        assert models["gpt-4o-mini"]["avg_duration_ms"] == pytest.approx(700)
        mock = models["mock-gpt"]
        assert (mock["price_known"], mock["cost_usd"], mock["unpriced_replies"]) == (False, 0, 2)
        assert (mock["replies_completed"], mock["replies_failed"]) == (1, 1)


def test_daily_stats_are_exact(stack, replayed, scenario):
    process, _, _ = replayed
    with stack.client(process, "admin") as client:
        body = client.get(
            "/daily-stats", params={"days": 3, "end": scenario.today.isoformat()}
        ).json()
    assert body["total"] == 3
    today, yesterday, before = body["items"]
    assert today["date"] == scenario.today.isoformat()
    assert {
        k: today[k]
        for k in (
            "new_users",
            "active_users",
            "logins",
            "failed_logins",
            "conversations",
            "user_messages",
            "replies_completed",
            "replies_failed",
            "replies_cancelled",
            "prompt_tokens",
            "completion_tokens",
            "api_calls",
            "api_server_errors",
        )
    } == {
        "new_users": 1,
        "active_users": 3,
        "logins": 2,
        "failed_logins": 2,
        "conversations": 2,
        "user_messages": 4,
        "replies_completed": 2,
        "replies_failed": 1,
        "replies_cancelled": 1,
        "prompt_tokens": 1210,
        "completion_tokens": 550,
        "api_calls": 5,
        "api_server_errors": 1,
    }
    assert (yesterday["new_users"], yesterday["active_users"], yesterday["user_messages"]) == (
        2,
        2,
        2,
    )
    assert yesterday["cost_usd"] == pytest.approx(COST_MINI, abs=1e-9)
    assert yesterday["avg_response_time_ms"] == pytest.approx(700)
    assert before["user_messages"] == 0 and before["avg_response_time_ms"] is None


async def test_replaying_the_whole_stream_changes_nothing(stack, replayed, scenario):
    process, stream, unique = replayed
    with stack.client(process, "admin") as client:
        before = {
            path: client.get(path).json()
            for path in ("/users/top", "/conversations", "/api-usage", "/models", "/users/list")
        }
    for routing_key, body in stream:
        await stack.publish_raw(routing_key, body)
    # A second outcome for an already finished reply: the first one recorded stands.
    await stack.publish(
        ReplyFailed(
            producer="chat_worker",
            user_id=ALICE,
            conversation_id="conv-c1",
            message_id="r1",
            reply_to="m1",
            model="gpt-4o-mini",
            error_code="late",
            occurred_at=datetime.combine(scenario.today, time(12), UTC),
        )
    )
    await eventually(
        lambda: stack.ingested(unique + 1, duplicates=2 * len(stream) - unique),
        message="the replay was not absorbed",
    )
    with stack.client(process, "admin") as client:
        assert_summary(client.get("/summary").json(), scenario)
        after = {path: client.get(path).json() for path in before}
    assert after == before
    assert (
        await stack.scalar("SELECT status FROM analytics.replies WHERE message_id = 'r1'")
        == "completed"
    )

"""Events → metric deltas, as pure code: no database, no broker, no clock."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from services.analytics_consumer import models
from services.analytics_consumer.accumulators import ttft_bucket, utc_day
from services.analytics_consumer.projection import EVENT_HANDLERS, BatchEffects
from services.budgets.pricing import ModelPrice, PriceTable
from shared.events import (
    EVENT_TYPES,
    ApiKeyCreated,
    ApiKeyRevoked,
    ConversationCreated,
    ConversationEnded,
    Event,
    HttpRequestCompleted,
    HttpRequestRecord,
    MessageSent,
    ReplyCancelled,
    ReplyCompleted,
    ReplyFailed,
    ReplyStarted,
    UserDeleted,
    UserLoggedIn,
    UserRegistered,
    UserUpdated,
)

NOON = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DAY = date(2026, 3, 1)
PRICES = PriceTable(
    {"priced": ModelPrice(input_per_million=Decimal(1), output_per_million=Decimal(2))}
)


def _effects(*events: Event) -> BatchEffects:
    effects = BatchEffects(PRICES)
    for event in events:
        effects.add(event)
    return effects


def _completed(message_id: str = "r1", *, model: str = "priced", at: datetime = NOON, **extra):
    return ReplyCompleted(
        producer="t",
        user_id="u1",
        conversation_id="c1",
        message_id=message_id,
        reply_to="m1",
        model=model,
        prompt_tokens=100,
        completion_tokens=50,
        ttft_ms=123.4,
        duration_ms=900,
        occurred_at=at,
        **extra,
    )


def test_registration_and_login_count_for_the_day_and_the_user():
    effects = _effects(
        UserRegistered(
            producer="t", user_id="u1", username="alice", roles=["user"], occurred_at=NOON
        ),
        UserLoggedIn(producer="t", user_id="u1", username="alice", ip="10.0.0.1", occurred_at=NOON),
    )
    assert effects.daily[DAY].values == {"new_users": 1, "logins": 1}
    user = effects.users["u1"]
    assert (user.username, user.roles, user.counters["logins"]) == ("alice", ["user"], 1)
    assert user.registered_at == user.last_login_at == NOON
    assert [a["activity_type"] for a in effects.activities] == ["registration", "login"]
    assert effects.daily_users[(DAY, "u1")].values == {"logins": 1}


def test_a_deleted_user_has_no_name_even_from_an_older_event_after_the_deletion():
    effects = _effects(
        UserRegistered(producer="t", user_id="u1", username="alice", occurred_at=NOON),
        UserDeleted(producer="t", user_id="u1", occurred_at=NOON + timedelta(minutes=5)),
        UserLoggedIn(producer="t", user_id="u1", username="alice", occurred_at=NOON),
    )
    row = effects.users["u1"].row("u1")
    assert (row["username"], row["deleted_at"]) == (None, NOON + timedelta(minutes=5))
    assert (row["logins"], effects.daily[DAY].values["new_users"]) == (1, 1)  # metrics stay
    assert effects.deleted_users == {"u1"}  # its activities are anonymised when written


def test_the_newest_role_change_wins_whatever_the_arrival_order():
    later = UserUpdated(
        producer="t", user_id="u1", changed_fields=["roles"], roles=["admin"], occurred_at=NOON
    )
    earlier = UserUpdated(
        producer="t",
        user_id="u1",
        changed_fields=["roles", "is_active"],
        roles=["user"],
        is_active=False,
        occurred_at=NOON - timedelta(minutes=1),
    )
    user = _effects(later, earlier).users["u1"]
    assert user.roles == ["admin"]
    assert user.is_active is False  # only the earlier event said anything about it
    assert (user.first_seen_at, user.last_seen_at) == (NOON - timedelta(minutes=1), NOON)


def test_conversation_and_message_counts():
    effects = _effects(
        ConversationCreated(
            producer="t", user_id="u1", conversation_id="c1", model="m", occurred_at=NOON
        ),
        MessageSent(
            producer="t", user_id="u1", conversation_id="c1", message_id="m1", occurred_at=NOON
        ),
        ConversationEnded(
            producer="t", conversation_id="c1", occurred_at=NOON + timedelta(hours=1)
        ),
    )
    conversation = effects.conversations["c1"]
    assert conversation.user_id == "u1"
    assert conversation.counters["user_messages"] == 1
    assert conversation.ended_at == NOON + timedelta(hours=1)
    assert effects.users["u1"].counters["conversations"] == 1
    assert effects.daily[DAY].values == {"conversations_created": 1, "user_messages": 1}


def test_a_reply_is_only_staged_until_its_row_proves_new():
    effects = _effects(_completed())
    assert list(effects.replies) == ["r1"]
    assert effects.daily == {} and effects.users == {}
    row = effects.replies["r1"].row
    assert row["status"] == "completed"
    assert row["cost_usd"] == Decimal("0.0002")  # 100 x 1/M + 50 x 2/M
    assert row["price_known"] is True


def test_two_outcomes_of_one_reply_in_a_batch_keep_the_first():
    failed = ReplyFailed(
        producer="t", conversation_id="c1", message_id="r1", reply_to="m1", error_code="x"
    )
    effects = _effects(_completed(), failed)
    assert effects.replies["r1"].row["status"] == "completed"


def test_a_counted_reply_adds_tokens_cost_and_latency_everywhere():
    effects = _effects(_completed())
    effects.add_reply(effects.replies["r1"])
    day = effects.daily[DAY].values
    assert day["replies_completed"] == 1
    assert (day["prompt_tokens"], day["completion_tokens"]) == (100, 50)
    assert day["ttft_ms_total"] == 123.4 and day["reply_duration_ms_total"] == 900
    assert effects.daily_models[(DAY, "priced")].values["cost_usd"] == Decimal("0.0002")
    assert effects.conversations["c1"].counters["replies_completed"] == 1
    assert effects.users["u1"].counters["replies"] == 1
    assert effects.ttft == {("priced", 123): 1, (models.ALL_MODELS, 123): 1}


def test_unpriced_models_are_counted_not_failed():
    effects = _effects(_completed(model="no-such-model"))
    effects.add_reply(effects.replies["r1"])
    assert effects.replies["r1"].row["price_known"] is False
    assert effects.counters["unpriced_replies"] == 1
    assert effects.daily_models[(DAY, "no-such-model")].values["unpriced_replies"] == 1


def test_estimated_usage_is_in_the_totals_and_counted_apart():
    effects = _effects(_completed("r1"), _completed("r2", usage_estimated=True))
    for reply in list(effects.replies.values()):
        effects.add_reply(reply)
    assert effects.replies["r2"].row["usage_estimated"] is True
    assert effects.replies["r1"].row["usage_estimated"] is False
    for sums in (effects.daily[DAY].values, effects.daily_models[(DAY, "priced")].values):
        assert (sums["prompt_tokens"], sums["completion_tokens"]) == (200, 100)
        assert sums["estimated_replies"] == 1
        assert (sums["estimated_prompt_tokens"], sums["estimated_completion_tokens"]) == (100, 50)


def test_replies_to_api_key_requests_add_up_per_day_key_and_owner():
    cancelled = ReplyCancelled(
        producer="t",
        user_id="u1",
        conversation_id="c2",
        message_id="r3",
        reply_to="m3",
        model="priced",
        prompt_tokens=10,
        completion_tokens=4,
        usage_estimated=True,
        api_key_id="k1",
        occurred_at=NOON,
    )
    effects = _effects(
        _completed("r1", api_key_id="k1"),
        _completed("r2"),
        cancelled,  # r2: no key (chat)
    )
    for reply in list(effects.replies.values()):
        effects.add_reply(reply)
    assert effects.replies["r1"].row["api_key_id"] == "k1"
    assert effects.replies["r2"].row["api_key_id"] is None
    assert list(effects.daily_api_keys) == [(DAY, "k1", "u1")]
    assert effects.daily_api_keys[(DAY, "k1", "u1")].values == {
        "replies_completed": 1,
        "replies_cancelled": 1,
        "prompt_tokens": 110,
        "completion_tokens": 54,
        "cost_usd": Decimal("0.0002") + Decimal("0.000018"),
        "estimated_replies": 1,
        "estimated_prompt_tokens": 10,
        "estimated_completion_tokens": 4,
    }


def test_api_key_events_describe_the_key_whatever_their_order():
    revoked = ApiKeyRevoked(
        producer="auth", user_id="u1", key_id="k1", actor_id="admin", occurred_at=NOON
    )
    created = ApiKeyCreated(
        producer="auth",
        user_id="u1",
        key_id="k1",
        name="laptop",
        prefix="cvai-abcdefg",
        occurred_at=NOON - timedelta(days=1),
    )
    key = _effects(revoked, created).api_keys["k1"]
    assert key.row("k1") == {
        "key_id": "k1",
        "user_id": "u1",
        "name": "laptop",
        "prefix": "cvai-abcdefg",
        "created_at": NOON - timedelta(days=1),
        "revoked_at": NOON,
    }


def test_http_batches_roll_up_per_route_and_status_class():
    requests = [
        HttpRequestRecord(route="/a", method="get", status=200, duration_ms=10, occurred_at=NOON),
        HttpRequestRecord(route="/a", method="GET", status=200, duration_ms=30, occurred_at=NOON),
        HttpRequestRecord(route="/a", method="GET", status=503, duration_ms=5, occurred_at=NOON),
        HttpRequestRecord(route="/b", method="POST", status=404, duration_ms=-1, occurred_at=NOON),
    ]
    effects = _effects(HttpRequestCompleted(producer="t", service="gateway", requests=requests))
    assert effects.api[(DAY, "gateway", "/a", "GET", 200)] == [2, 40.0, 30.0]
    assert effects.api[(DAY, "gateway", "/b", "POST", 404)] == [1, 0.0, 0.0]
    day = effects.daily[DAY].values
    assert (day["api_calls"], day["api_server_errors"], day["api_client_errors"]) == (4, 1, 1)


def test_events_that_carry_no_metric_change_nothing():
    started = ReplyStarted(
        producer="t", user_id="u1", conversation_id="c1", message_id="r1", reply_to="m1", model="m"
    )
    effects = _effects(started)
    assert not (effects.users or effects.conversations or effects.activities or effects.replies)


def test_the_dispatch_table_names_only_catalogued_event_types():
    assert set(EVENT_HANDLERS) <= set(EVENT_TYPES)


@pytest.mark.parametrize(
    ("ttft_ms", "bucket"),
    [
        (-5, 0),
        (0.4, 0),
        (0.6, 1),
        (9_999.4, 9_999),
        (10_049, 10_000),
        (10_150, 10_100),
        (1e9, 3_600_000),
    ],
)
def test_ttft_buckets_are_fine_below_ten_seconds_and_coarse_above(ttft_ms, bucket):
    assert ttft_bucket(ttft_ms) == bucket


def test_utc_day_of_aware_and_naive_times():
    assert utc_day(datetime(2026, 3, 1, 23, 30, tzinfo=UTC) + timedelta(hours=1)) == date(
        2026, 3, 2
    )
    assert utc_day(datetime(2026, 3, 1, 23, 30)) == DAY

"""The upsert of each analytics table, and writing one batch's effects through them.

Rows are written in key order so that two consumers committing overlapping batches cannot
deadlock each other.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from services.analytics_consumer import models
from services.analytics_consumer.accumulators import CONVERSATION_COUNTERS, USER_COUNTERS
from services.analytics_consumer.bulk_upsert import BulkUpsert, sum_rows, table_of
from services.analytics_consumer.projection import BatchEffects

_DAILY = BulkUpsert.additive(models.DailyStats, ("day",))
# xmax is 0 for a row this statement inserted: a user's first activity of that day.
_DAILY_USERS = BulkUpsert.additive(
    models.DailyUserStats, ("day", "user_id"), returning="day, (xmax = 0) AS inserted"
)
_DAILY_MODELS = BulkUpsert.additive(models.DailyModelStats, ("day", "model"))
_DAILY_API_KEYS = BulkUpsert.additive(models.DailyApiKeyStats, ("day", "api_key_id", "user_id"))
_TTFT = BulkUpsert.additive(models.TtftHistogram, ("model", "bucket_ms"))
_API = BulkUpsert(
    table_of(models.DailyApiUsage),
    (
        "day",
        "service",
        "route",
        "method",
        "status_code",
        "calls",
        "duration_ms_total",
        "duration_ms_max",
    ),
    ("day", "service", "route", "method", "status_code"),
    {
        "calls": "t.calls + excluded.calls",
        "duration_ms_total": "t.duration_ms_total + excluded.duration_ms_total",
        "duration_ms_max": "GREATEST(t.duration_ms_max, excluded.duration_ms_max)",
    },
)
_REPLIES = BulkUpsert(
    table_of(models.ReplyMetrics),
    tuple(c.name for c in table_of(models.ReplyMetrics).columns),
    ("message_id",),
    {},
    returning="message_id",
)
_ACTIVITIES = BulkUpsert(
    table_of(models.UserActivity),
    (
        "event_id",
        "user_id",
        "username",
        "activity_type",
        "ip",
        "user_agent",
        "details",
        "source",
        "occurred_at",
    ),
    ("event_id",),
    {},
)
_NEWER_ROLES = (
    "(excluded.roles_set_at IS NOT NULL AND "
    "(t.roles_set_at IS NULL OR excluded.roles_set_at >= t.roles_set_at))"
)
_NEWER_ACTIVE = (
    "(excluded.is_active_set_at IS NOT NULL AND "
    "(t.is_active_set_at IS NULL OR excluded.is_active_set_at >= t.is_active_set_at))"
)
_USERS = BulkUpsert(
    table_of(models.AnalyticsUser),
    tuple(c.name for c in table_of(models.AnalyticsUser).columns),
    ("user_id",),
    {
        **{c: f"t.{c} + excluded.{c}" for c in (*USER_COUNTERS, "cost_usd")},
        # A deleted account is anonymous: its name never comes back with a late event.
        "username": "CASE WHEN COALESCE(excluded.deleted_at, t.deleted_at) IS NOT NULL "
        "THEN NULL ELSE COALESCE(excluded.username, t.username) END",
        "roles": f"CASE WHEN {_NEWER_ROLES} THEN excluded.roles ELSE t.roles END",
        "roles_set_at": f"CASE WHEN {_NEWER_ROLES} THEN excluded.roles_set_at "
        "ELSE t.roles_set_at END",
        "is_active": f"CASE WHEN {_NEWER_ACTIVE} THEN excluded.is_active ELSE t.is_active END",
        "is_active_set_at": f"CASE WHEN {_NEWER_ACTIVE} THEN excluded.is_active_set_at "
        "ELSE t.is_active_set_at END",
        "registered_at": "LEAST(t.registered_at, excluded.registered_at)",
        "deleted_at": "LEAST(t.deleted_at, excluded.deleted_at)",
        "first_seen_at": "LEAST(t.first_seen_at, excluded.first_seen_at)",
        "last_seen_at": "GREATEST(t.last_seen_at, excluded.last_seen_at)",
        "last_login_at": "GREATEST(t.last_login_at, excluded.last_login_at)",
    },
)
_CONVERSATIONS = BulkUpsert(
    table_of(models.ConversationMetrics),
    tuple(c.name for c in table_of(models.ConversationMetrics).columns),
    ("conversation_id",),
    {
        **{
            c: f"t.{c} + excluded.{c}"
            for c in (
                *CONVERSATION_COUNTERS,
                "cost_usd",
                "reply_duration_ms_total",
                "ttft_ms_total",
            )
        },
        "user_id": "COALESCE(t.user_id, excluded.user_id)",
        "model": "COALESCE(t.model, excluded.model)",
        "assistant_id": "COALESCE(t.assistant_id, excluded.assistant_id)",
        "started_at": "LEAST(t.started_at, excluded.started_at)",
        "created_at": "LEAST(t.created_at, excluded.created_at)",
        "last_activity_at": "GREATEST(t.last_activity_at, excluded.last_activity_at)",
        "ended_at": "LEAST(t.ended_at, excluded.ended_at)",
        "deleted_at": "LEAST(t.deleted_at, excluded.deleted_at)",
    },
)
_API_KEYS = BulkUpsert(
    table_of(models.ApiKey),
    tuple(c.name for c in table_of(models.ApiKey).columns),
    ("key_id",),
    {
        "user_id": "COALESCE(t.user_id, excluded.user_id)",
        "name": "COALESCE(excluded.name, t.name)",
        "prefix": "COALESCE(excluded.prefix, t.prefix)",
        "created_at": "LEAST(t.created_at, excluded.created_at)",
        "revoked_at": "LEAST(t.revoked_at, excluded.revoked_at)",
    },
)
_COUNTERS = BulkUpsert(
    table_of(models.SystemMetric),
    ("name", "value"),
    ("name",),
    {"value": "t.value + excluded.value", "updated_at": "now()"},
)
_GAUGES = BulkUpsert(
    table_of(models.SystemMetric),
    ("name", "value"),
    ("name",),
    {"value": "excluded.value", "updated_at": "now()"},
)
# Per user, one transaction at a time stores activities or a deletion: a consumer storing a
# (late) activity of a user another consumer is deleting sees that deletion once it commits.
# Taken in key order, before any row `write_effects` writes, so these locks cannot deadlock.
_LOCK_USERS = text(
    "SELECT pg_advisory_xact_lock(:space, hashtext(user_id)) "
    "FROM unnest(CAST(:ids AS text[])) AS user_id ORDER BY user_id"
)
_USER_LOCK_SPACE = 0x616E6F6E  # "anon": apart from other advisory locks on the database
# What an activity says about a person: a deleted account's activities keep only their kind and
# time (and the opaque user id), like its metrics.
_ANONYMISE_ACTIVITIES = text(
    "UPDATE analytics.user_activities AS a "
    "SET username = NULL, ip = NULL, user_agent = NULL "
    "FROM analytics.users AS u "
    "WHERE u.user_id = ANY(CAST(:ids AS text[])) AND u.deleted_at IS NOT NULL "
    "AND a.user_id = u.user_id "
    "AND (a.username IS NOT NULL OR a.ip IS NOT NULL OR a.user_agent IS NOT NULL)"
)
_CLAIM = text(
    "INSERT INTO analytics.processed_events (event_id, event_type) "
    "SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:types AS text[])) "
    "ON CONFLICT DO NOTHING RETURNING event_id"
)


async def claim_new_events(
    conn: AsyncConnection, ids: Sequence[uuid.UUID], types: Sequence[str]
) -> set[uuid.UUID]:
    """Record the ids; the ones returned were never processed before."""
    if not ids:
        return set()
    result = await conn.execute(_CLAIM, {"ids": list(ids), "types": [t[:64] for t in types]})
    return {row[0] for row in result}


async def write_replies(conn: AsyncConnection, effects: BatchEffects) -> None:
    """Insert the batch's reply rows; only replies whose row was new are counted."""
    staged = sorted(effects.replies.values(), key=lambda r: r.row["message_id"])
    inserted = {row[0] for row in await _REPLIES.execute(conn, [r.row for r in staged])}
    for reply in staged:
        if reply.row["message_id"] in inserted:
            effects.add_reply(reply)


async def write_effects(
    conn: AsyncConnection, effects: BatchEffects, gauges: Mapping[str, float]
) -> None:
    """Every table a batch touches, one statement each (replies first: `write_replies`)."""
    named = sorted(
        {a["user_id"] for a in effects.activities if a["user_id"]} | effects.deleted_users
    )
    if named:
        await conn.execute(_LOCK_USERS, {"space": _USER_LOCK_SPACE, "ids": named})
    users = [effects.users[user_id].row(user_id) for user_id in sorted(effects.users)]
    for row in users:
        row["roles"] = None if row["roles"] is None else json.dumps(row["roles"])
    await _USERS.execute(conn, users)
    for activity in effects.activities:
        details = activity["details"]
        activity["details"] = None if details is None else json.dumps(details)
    await _ACTIVITIES.execute(conn, effects.activities)
    if named:
        await conn.execute(_ANONYMISE_ACTIVITIES, {"ids": named})
    await _CONVERSATIONS.execute(
        conn,
        [effects.conversations[c].row(c) for c in sorted(effects.conversations)],
    )
    newly_active = await _DAILY_USERS.execute(
        conn, sum_rows(_DAILY_USERS.keys, _DAILY_USERS.columns, effects.daily_users)
    )
    for day, inserted in newly_active:
        if inserted:
            effects.daily[day].add("active_users", 1)
    await _DAILY.execute(conn, sum_rows(_DAILY.keys, _DAILY.columns, effects.daily))
    await _DAILY_MODELS.execute(
        conn, sum_rows(_DAILY_MODELS.keys, _DAILY_MODELS.columns, effects.daily_models)
    )
    await _DAILY_API_KEYS.execute(
        conn, sum_rows(_DAILY_API_KEYS.keys, _DAILY_API_KEYS.columns, effects.daily_api_keys)
    )
    await _API_KEYS.execute(conn, [effects.api_keys[k].row(k) for k in sorted(effects.api_keys)])
    await _TTFT.execute(
        conn,
        [
            {"model": model, "bucket_ms": bucket, "replies": count}
            for (model, bucket), count in sorted(effects.ttft.items())
        ],
    )
    await _API.execute(
        conn,
        [
            {
                "day": day,
                "service": service,
                "route": route,
                "method": method,
                "status_code": status,
                "calls": int(calls),
                "duration_ms_total": total,
                "duration_ms_max": longest,
            }
            for (day, service, route, method, status), (calls, total, longest) in sorted(
                effects.api.items()
            )
        ],
    )
    await write_system_metrics(conn, effects.counters, gauges)


async def write_system_metrics(
    conn: AsyncConnection, counters: Mapping[str, float], gauges: Mapping[str, float]
) -> None:
    """Counters add up; gauges are overwritten with the latest reading."""
    # A zero counter changes nothing; a zero gauge is a reading worth keeping.
    await _COUNTERS.execute(
        conn,
        [{"name": n[:128], "value": float(v)} for n, v in sorted(counters.items()) if v],
    )
    await _GAUGES.execute(
        conn, [{"name": n[:128], "value": float(v)} for n, v in sorted(gauges.items())]
    )

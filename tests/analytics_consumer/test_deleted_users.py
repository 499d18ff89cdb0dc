"""A deleted account is anonymised in analytics and its metrics stay (issue 11, item 2): its
name goes from its user row and its activities (with their addresses), also when the deletion
is delivered again or an older event of the account arrives after it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from shared.events import (
    ConversationCreated,
    MessageSent,
    UserDeleted,
    UserLoggedIn,
    UserLoginFailed,
    UserRegistered,
)
from tests.analytics_consumer.conftest import eventually

pytestmark = pytest.mark.e2e

START = datetime.now(UTC) - timedelta(hours=1)


def at(minutes: int) -> datetime:
    return START + timedelta(minutes=minutes)


def account_events(user_id: str, username: str) -> list[Any]:
    seen = {"ip": "203.0.113.7", "user_agent": "Browser/1.0"}
    return [
        UserRegistered(
            producer="auth", user_id=user_id, username=username, occurred_at=at(0), **seen
        ),
        UserLoggedIn(
            producer="auth", user_id=user_id, username=username, occurred_at=at(1), **seen
        ),
        UserLoginFailed(
            producer="auth",
            user_id=user_id,
            username_attempted=username,
            reason="bad_password",
            occurred_at=at(2),
            **seen,
        ),
        ConversationCreated(
            producer="gateway", conversation_id=f"c-{user_id}", user_id=user_id, occurred_at=at(3)
        ),
        MessageSent(
            producer="gateway",
            user_id=user_id,
            conversation_id=f"c-{user_id}",
            message_id=f"m-{user_id}",
            occurred_at=at(4),
        ),
    ]


async def user_row(stack, user_id: str) -> dict[str, Any]:
    async with stack.engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT username, deleted_at, logins, conversations, user_messages "
                    "FROM analytics.users WHERE user_id = :id"
                ),
                {"id": user_id},
            )
        ).one()
    return dict(row._mapping)


async def activities(stack, user_id: str) -> list[tuple[str, str | None, str | None, str | None]]:
    async with stack.engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT activity_type, username, ip, user_agent FROM analytics.user_activities "
                "WHERE user_id = :id ORDER BY occurred_at"
            ),
            {"id": user_id},
        )
    return [tuple(r) for r in rows]  # type: ignore[misc]


async def test_a_deleted_account_loses_its_name_and_keeps_its_metrics(stack, consumer):
    gone, kept = account_events("u-gone", "gone_name"), account_events("u-kept", "kept_name")
    await stack.publish_all([*gone, *kept])
    await eventually(lambda: stack.ingested(len(gone) + len(kept)))

    deletion = UserDeleted(producer="auth", user_id="u-gone", actor_id="admin-1", occurred_at=at(5))
    await stack.publish(deletion)
    await eventually(lambda: stack.ingested(len(gone) + len(kept) + 1))
    anonymous = {"username": None, "logins": 1, "conversations": 1, "user_messages": 1}
    row = await user_row(stack, "u-gone")
    assert {k: row[k] for k in anonymous} == anonymous and row["deleted_at"] is not None
    assert await activities(stack, "u-gone") == [
        ("registration", None, None, None),
        ("login", None, None, None),
        ("login_failed", None, None, None),
        ("account_deleted", None, None, None),
    ]
    # Another account is untouched.
    assert (await user_row(stack, "u-kept"))["username"] == "kept_name"
    assert {a[1] for a in await activities(stack, "u-kept")} == {"kept_name"}

    # The deletion delivered again, and a login from before it arriving only now.
    late = UserLoggedIn(
        producer="auth",
        user_id="u-gone",
        username="gone_name",
        ip="203.0.113.7",
        occurred_at=at(4),
    )
    await stack.publish(deletion)
    await stack.publish(late)
    total = len(gone) + len(kept) + 2
    await eventually(lambda: stack.ingested(total, duplicates=1))
    row = await user_row(stack, "u-gone")
    assert (row["username"], row["logins"]) == (None, 2)
    assert all(a[1:] == (None, None, None) for a in await activities(stack, "u-gone"))
    # What an admin sees of the account: its activities, without a name or an address.
    with stack.client(consumer, "admin") as client:
        shown = client.get("/users/activities", params={"user_id": "u-gone", "limit": 100})
    assert shown.status_code == 200 and shown.json()["total"] == 5
    assert "gone_name" not in shown.text and "203.0.113.7" not in shown.text

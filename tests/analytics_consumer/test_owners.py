"""Anonymous owners are counted apart from registered users (issue 11, item 16)."""

from __future__ import annotations

import pytest

from shared.events import ConversationCreated, UserRegistered
from shared.ids import ANONYMOUS_OWNER_PREFIX
from tests.analytics_consumer.conftest import eventually

pytestmark = pytest.mark.e2e


async def test_anonymous_owners_are_not_users(stack):
    process = stack.start_consumer()
    anonymous = f"{ANONYMOUS_OWNER_PREFIX}anon-owner-1"
    events = [
        UserRegistered(producer="auth", user_id="member-1", username="member1"),
        ConversationCreated(producer="gateway", conversation_id="c-member", user_id="member-1"),
        ConversationCreated(producer="gateway", conversation_id="c-anon-1", user_id=anonymous),
        ConversationCreated(producer="gateway", conversation_id="c-anon-2", user_id=anonymous),
    ]
    await stack.publish_all(events)
    await eventually(lambda: stack.ingested(len(events)))
    with stack.client(process, "admin") as client:
        summary = client.get("/summary").json()
    assert summary["total_users"] == 1
    assert summary["anonymous_users"] == 1
    assert summary["total_conversations"] == 3

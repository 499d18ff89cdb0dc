"""A known event stream and the numbers every dashboard endpoint must answer for it.

Two days (yesterday and today, UTC), three users, three conversations, six user messages,
six reply outcomes (four completed, one failed, one cancelled), five HTTP requests, two events
of a type this consumer does not know, and `reply.started` noise. Prices: gpt-4o-mini
0.15/0.60, gpt-4o 2.50/10.00 USD per million tokens; mock-gpt has no price.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from shared.events import (
    ConversationCreated,
    Event,
    HttpRequestCompleted,
    HttpRequestRecord,
    MessageSent,
    ReplyCancelled,
    ReplyCompleted,
    ReplyFailed,
    ReplyStarted,
    UserLoggedIn,
    UserLoggedOut,
    UserLoginFailed,
    UserRegistered,
    UserUpdated,
)

ALICE, BOB, CAROL = "u-alice-0000001", "u-bob-000000001", "u-carol-0000001"


@dataclass(frozen=True)
class Scenario:
    today: date
    yesterday: date
    events: list[Event]
    unknown: list[bytes]
    """Raw bodies of events whose type analytics does not know (a newer producer)."""


def build(today: date) -> Scenario:
    yesterday = today - timedelta(days=1)

    def at(day: date, hour: int, minute: int = 0) -> datetime:
        return datetime.combine(day, time(hour, minute), UTC)

    t, y = today, yesterday
    events: list[Event] = [
        UserRegistered(
            producer="auth", user_id=ALICE, username="alice", roles=["user"], occurred_at=at(y, 9)
        ),
        UserRegistered(
            producer="auth", user_id=BOB, username="bob", roles=["user"], occurred_at=at(y, 9, 5)
        ),
        UserRegistered(
            producer="auth", user_id=CAROL, username="carol", roles=["user"], occurred_at=at(t, 8)
        ),
        UserLoggedIn(
            producer="auth",
            user_id=ALICE,
            username="alice",
            ip="10.0.0.1",
            user_agent="ua-alice",
            occurred_at=at(y, 9, 10),
        ),
        UserLoggedIn(
            producer="auth", user_id=ALICE, username="alice", ip="10.0.0.2", occurred_at=at(t, 9)
        ),
        UserLoggedIn(producer="auth", user_id=BOB, username="bob", occurred_at=at(t, 9, 30)),
        UserLoginFailed(
            producer="auth",
            username_attempted="alice",
            reason="bad_password",
            occurred_at=at(t, 8, 59),
        ),
        UserLoginFailed(
            producer="auth",
            username_attempted="mallory",
            reason="unknown_user",
            occurred_at=at(t, 7),
        ),
        UserLoggedOut(producer="auth", user_id=BOB, occurred_at=at(t, 12)),
        # The newer role change must win although it may be applied first.
        UserUpdated(
            producer="auth",
            user_id=CAROL,
            changed_fields=["roles"],
            roles=["user", "manager"],
            occurred_at=at(t, 13),
        ),
        UserUpdated(
            producer="auth",
            user_id=CAROL,
            changed_fields=["roles"],
            roles=["user"],
            occurred_at=at(t, 12, 30),
        ),
        UserUpdated(
            producer="auth",
            user_id=BOB,
            changed_fields=["is_active"],
            is_active=False,
            occurred_at=at(t, 14),
        ),
        ConversationCreated(
            producer="gateway",
            user_id=ALICE,
            conversation_id="conv-c1",
            model="gpt-4o-mini",
            occurred_at=at(y, 10),
        ),
        ConversationCreated(
            producer="gateway",
            user_id=ALICE,
            conversation_id="conv-c2",
            model="gpt-4o",
            occurred_at=at(t, 10),
        ),
        ConversationCreated(
            producer="gateway",
            user_id=BOB,
            conversation_id="conv-c3",
            model="mock-gpt",
            occurred_at=at(t, 11),
        ),
    ]
    messages = [
        ("m1", "conv-c1", ALICE, at(y, 10, 1)),
        ("m2", "conv-c1", ALICE, at(y, 10, 5)),
        ("m3", "conv-c2", ALICE, at(t, 10, 1)),
        ("m6", "conv-c2", ALICE, at(t, 10, 10)),
        ("m4", "conv-c3", BOB, at(t, 11, 1)),
        ("m5", "conv-c3", BOB, at(t, 11, 3)),
    ]
    events += [
        MessageSent(
            producer="gateway",
            user_id=user,
            conversation_id=conversation,
            message_id=message,
            content_length=12,
            occurred_at=moment,
        )
        for message, conversation, user, moment in messages
    ]
    completed = [
        ("r1", "m1", "conv-c1", ALICE, "gpt-4o-mini", 100, 200, 120.0, 900.0, at(y, 10, 2)),
        ("r2", "m2", "conv-c1", ALICE, "gpt-4o-mini", 150, 50, 80.0, 500.0, at(y, 10, 6)),
        ("r3", "m3", "conv-c2", ALICE, "gpt-4o", 1000, 500, 300.0, 2000.0, at(t, 10, 2)),
        ("r4", "m4", "conv-c3", BOB, "mock-gpt", 10, 20, 10.0, 100.0, at(t, 11, 2)),
    ]
    for (
        reply,
        to,
        conversation,
        user,
        model,
        prompt,
        completion,
        ttft,
        duration,
        moment,
    ) in completed:
        events.append(
            ReplyStarted(
                producer="chat_worker",
                user_id=user,
                conversation_id=conversation,
                message_id=reply,
                reply_to=to,
                model=model,
                occurred_at=moment,
            )
        )
        events.append(
            ReplyCompleted(
                producer="chat_worker",
                user_id=user,
                conversation_id=conversation,
                message_id=reply,
                reply_to=to,
                model=model,
                prompt_tokens=prompt,
                completion_tokens=completion,
                ttft_ms=ttft,
                duration_ms=duration,
                finish_reason="stop",
                occurred_at=moment,
            )
        )
    events += [
        ReplyFailed(
            producer="chat_worker",
            user_id=BOB,
            conversation_id="conv-c3",
            message_id="r5",
            reply_to="m5",
            model="mock-gpt",
            error_code="upstream_error",
            duration_ms=40.0,
            occurred_at=at(t, 11, 4),
        ),
        ReplyCancelled(
            producer="chat_worker",
            user_id=ALICE,
            conversation_id="conv-c2",
            message_id="r6",
            reply_to="m6",
            model="gpt-4o",
            prompt_tokens=200,
            completion_tokens=30,
            duration_ms=300.0,
            occurred_at=at(t, 10, 11),
        ),
        HttpRequestCompleted(
            producer="gateway",
            service="gateway",
            occurred_at=at(t, 10, 30),
            requests=[
                HttpRequestRecord(
                    route="/conversations/",
                    method="GET",
                    status=200,
                    duration_ms=10.0,
                    occurred_at=at(t, 10, 20),
                ),
                HttpRequestRecord(
                    route="/conversations/{conversation_id}/messages",
                    method="POST",
                    status=202,
                    duration_ms=20.0,
                    occurred_at=at(t, 10, 21),
                ),
                HttpRequestRecord(
                    route="/conversations/{conversation_id}",
                    method="GET",
                    status=404,
                    duration_ms=5.0,
                    occurred_at=at(t, 10, 22),
                ),
            ],
        ),
        HttpRequestCompleted(
            producer="auth",
            service="auth",
            occurred_at=at(t, 9, 1),
            requests=[
                HttpRequestRecord(
                    route="/auth/token",
                    method="POST",
                    status=200,
                    duration_ms=50.0,
                    occurred_at=at(t, 9),
                ),
                HttpRequestRecord(
                    route="/auth/token",
                    method="POST",
                    status=500,
                    duration_ms=70.0,
                    occurred_at=at(t, 9, 0),
                ),
            ],
        ),
    ]
    unknown = [
        _unknown_body("user.teleported", at(t, 15)),
        _unknown_body("assistant.hummed", at(t, 15, 1)),
    ]
    return Scenario(today=t, yesterday=y, events=events, unknown=unknown)


def _unknown_body(event_type: str, moment: datetime) -> bytes:
    return json.dumps(
        {
            "event_id": str(uuid.uuid4()),
            "type": event_type,
            "version": 1,
            "occurred_at": moment.isoformat(),
            "producer": "future-service",
            "user_id": ALICE,
            "destination": "mars",
        }
    ).encode()


def with_newer_version(event: ReplyCompleted) -> bytes:
    """The same event as a newer producer would send it: version 2, a field we do not know."""
    data = json.loads(event.model_dump_json())
    data["version"] = 2
    data["reasoning_tokens"] = 5
    return json.dumps(data).encode()

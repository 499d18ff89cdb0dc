"""Unit tests of the shared kernel: ids, events, settings, log redaction."""

from __future__ import annotations

import json
import logging
import uuid

import pytest
from pydantic import ValidationError

from shared.events import (
    EVENT_TYPES,
    ReplyCompleted,
    UnknownEventType,
    UserLoggedIn,
    parse_event,
)
from shared.ids import IdKind, is_valid_id, new_id
from shared.logging import configure_logging, redact
from shared.settings import PLACEHOLDER_SECRET, ServiceSettings
from shared.topology import Topology


@pytest.mark.parametrize(("kind", "length"), [(k, int(k)) for k in IdKind])
def test_ids_have_the_documented_length_and_are_url_safe(kind, length):
    ids = {new_id(kind) for _ in range(2000)}
    assert len(ids) == 2000
    assert all(len(i) == length and is_valid_id(i, kind) for i in ids)
    assert not is_valid_id("a/b" + "x" * (length - 3), kind)


def test_every_catalogue_event_round_trips_through_json():
    required = {
        "user.registered", "user.logged_in", "user.login_failed", "user.logged_out",
        "user.updated", "user.deleted", "conversation.created", "conversation.renamed",
        "conversation.ended", "conversation.deleted", "message.sent", "reply.started",
        "reply.completed", "reply.failed", "reply.cancelled", "http.request.completed",
    }  # fmt: skip
    assert required <= set(EVENT_TYPES)
    for event_type, cls in EVENT_TYPES.items():
        assert cls.routing_key == event_type
        assert cls.__doc__ and cls.__doc__.startswith("Sent when")


def test_parse_event_ignores_unknown_fields_and_rejects_unknown_types():
    event = ReplyCompleted(
        producer="chat_worker",
        conversation_id="c" * 12,
        message_id="m" * 10,
        reply_to="u" * 10,
        model="gpt-4o-mini",
        prompt_tokens=3,
        completion_tokens=5,
    )
    raw = json.loads(event.model_dump_json())
    raw["field_from_the_future"] = 1
    parsed = parse_event(json.dumps(raw))
    assert parsed == event
    with pytest.raises(UnknownEventType):
        parse_event({**raw, "type": "reply.teleported"})
    with pytest.raises(ValidationError):
        parse_event({"type": "user.logged_in", "event_id": str(uuid.uuid4())})


@pytest.mark.parametrize("environment", ["production", "test"])
def test_placeholder_secret_refused_outside_development(environment):
    ServiceSettings(environment="development")
    with pytest.raises(ValidationError, match="placeholder"):
        ServiceSettings(environment=environment, jwt_secret=PLACEHOLDER_SECRET)
    ServiceSettings(environment="production", jwt_secret="x" * 40)
    with pytest.raises(ValidationError):
        ServiceSettings(jwt_secret="too-short")


def test_topology_names_are_namespaced():
    names = Topology("t1234").chat_requests.name, Topology("t1234").events.name
    assert all(n.startswith("t1234.") for n in names)


@pytest.mark.parametrize(
    "secret_text",
    [
        "GET /ws?token=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl HTTP/1.1",
        'password="hunter2secret"',
        "Authorization: Bearer abc.def.ghi",
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA",
        "amqp://guest:hunter2secret@rabbit:5672/",
    ],
)
def test_redaction_removes_secrets(secret_text):
    cleaned = redact(secret_text)
    for secret in ("hunter2secret", "c2lnbmF0dXJl", "abc.def.ghi", "aGFzaA"):
        assert secret not in cleaned


def test_log_lines_are_structured_and_redacted(capsys):
    configure_logging("test", "INFO", "json")
    logging.getLogger("x").info("login", extra={"user_id": "u1", "query": "token=abc.def"})
    line = capsys.readouterr().err.strip().splitlines()[-1]
    record = json.loads(line)
    assert record["service"] == "test" and record["user_id"] == "u1" and record["msg"] == "login"
    assert "abc.def" not in line


def test_logged_in_event_carries_client_details():
    event = UserLoggedIn(producer="auth", user_id="u" * 16, username="ann", ip="10.0.0.1")
    assert parse_event(event.model_dump_json()) == event

"""The AsyncAPI document lists every message class the code puts on the broker, and is valid
AsyncAPI 3.0 (checked against the specification's own JSON schema, tests/shared/data)."""

from __future__ import annotations

import copy
import inspect
import json
import typing
from pathlib import Path

import jsonschema
import pytest
from pydantic import BaseModel

from shared import events, stream
from shared.asyncapi import asyncapi_document
from shared.topology import Topology

SCHEMA = Path(__file__).parent / "data" / "asyncapi-3.0.0.schema.json"
"""schemas/3.0.0-without-$id.json of github.com/asyncapi/spec-json-schemas (Apache-2.0)."""


@pytest.fixture(scope="module")
def document() -> dict:
    return asyncapi_document(Topology("convoai"))


def event_classes() -> list[type[events.Event]]:
    """Every concrete event model in shared/events.py, found by looking, not by a list."""
    return [
        cls
        for _, cls in inspect.getmembers(events, inspect.isclass)
        if issubclass(cls, events.Event)
        and cls is not events.Event
        and cls.__module__ == events.__name__
    ]


def union_members(annotated: object) -> set[type[BaseModel]]:
    union = typing.get_args(annotated)[0]
    return set(typing.get_args(union))


def test_every_event_class_is_a_channel_with_its_schema(document: dict) -> None:
    classes = event_classes()
    assert len(classes) >= 16
    for cls in classes:
        routing_key = cls.model_fields["type"].default
        channel = document["channels"].get(routing_key)
        assert channel is not None, f"{cls.__name__} ({routing_key}) is not in the document"
        assert channel["bindings"]["amqp"]["exchange"]["name"] == "convoai.events"
        assert channel["description"] == cls.__doc__.strip()
        message = document["components"]["messages"][f"{routing_key}:Message"]
        assert message["payload"] == {"$ref": f"#/components/schemas/{cls.__name__}"}
        schema = document["components"]["schemas"][cls.__name__]
        assert set(schema["properties"]) == set(cls.model_fields), cls.__name__
        operation = document["operations"][routing_key]
        assert operation["action"] == "send"
        assert operation["bindings"]["amqp"]["deliveryMode"] == 2  # persistent


def test_reply_frames_and_worker_commands_are_documented(document: dict) -> None:
    schemas = document["components"]["schemas"]
    for cls in union_members(stream.StreamFrame) | union_members(stream.ControlCommand):
        assert cls.__name__ in schemas, cls.__name__
    frames = document["channels"]["reply.frames"]
    assert frames["address"] == "conv.{conversation_id}"
    assert frames["bindings"]["amqp"]["exchange"]["name"] == "convoai.stream"
    assert "conversation_id" in frames["parameters"]


def test_document_is_valid_asyncapi_3(document: dict) -> None:
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(document)]
    assert errors == []
    # The check has teeth: a document missing what AsyncAPI requires is refused.
    broken = copy.deepcopy(document)
    del broken["info"]
    broken["channels"]["message.sent"]["address"] = 42
    assert len(list(validator.iter_errors(broken))) >= 2


def test_names_follow_the_namespace() -> None:
    document = asyncapi_document(Topology("acme"))
    exchange = document["channels"]["message.sent"]["bindings"]["amqp"]["exchange"]["name"]
    assert exchange == "acme.events"

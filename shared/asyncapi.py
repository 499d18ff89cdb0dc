"""The broker contract as an AsyncAPI 3.0 document, generated from the message models.

FastStream writes the document (channels, operations, AMQP bindings, JSON schemas of the
pydantic models) from publishers declared on a broker that is never connected; this module
declares one publisher per event type on `<ns>.events`, one for the live reply frames on
`<ns>.stream` and one for the worker commands on `<ns>.control`, so another team can write a
consumer of `convoai.events` from the document alone. The trace context headers every message
may carry are added to each message, as FastStream has no parameter for a header schema.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter
from faststream.rabbit import RabbitBroker
from faststream.specification import AsyncAPI

from shared.events import EVENT_TYPES
from shared.stream import ControlCommand, StreamFrame
from shared.topology import Topology

DOCUMENT_VERSION = "1.0.0"

TRACE_HEADERS = {
    "type": "object",
    "properties": {
        "traceparent": {
            "type": "string",
            "description": "W3C trace context of the span that published the message "
            "(present when the producer traces).",
        },
        "tracestate": {"type": "string", "description": "W3C trace state, with traceparent."},
    },
}


def asyncapi_document(topology: Topology, server: str = "rabbitmq:5672") -> dict[str, Any]:
    """Every message ConvoAI puts on the broker, in `topology`'s namespace."""
    broker = RabbitBroker(f"amqp://{server}/")
    for event_type, event_class in sorted(EVENT_TYPES.items()):
        broker.publisher(
            exchange=topology.events,
            routing_key=event_type,
            persist=True,
            title=event_type,
            description=(event_class.__doc__ or "").strip(),
            schema=event_class,
        )
    broker.publisher(
        exchange=topology.stream,
        routing_key="conv.{conversation_id}",
        title="reply.frames",
        description="Live frames of a reply (transient), routing key `conv.<conversation_id>`: "
        "every gateway watching the conversation forwards them to its sockets.",
        schema=StreamFrame,
    )
    broker.publisher(
        exchange=topology.control,
        routing_key="conv.{conversation_id}",
        title="worker.commands",
        description="Commands from a gateway to whichever worker holds the conversation's "
        "reply (cancel, resync), routing key `conv.<conversation_id>`.",
        schema=ControlCommand,
    )
    specification = AsyncAPI(
        broker,
        title="ConvoAI broker messages",
        version=DOCUMENT_VERSION,
        description="Domain events on the events exchange (routing key = event type, "
        "persistent, JSON), live reply frames and worker commands.",
        schema_version="3.0.0",
    ).to_specification()
    document: dict[str, Any] = json.loads(specification.to_json())
    for message in document["components"]["messages"].values():
        message["headers"] = TRACE_HEADERS
    for channel in document["channels"].values():
        if "{conversation_id}" in channel["address"]:
            channel["parameters"] = {"conversation_id": {"description": "A conversation's id."}}
    return document


def asyncapi_router(topology: Topology) -> APIRouter:
    """`GET /asyncapi.json`: the document, built once."""
    router = APIRouter(tags=["contract"])
    document = asyncapi_document(topology)

    @router.get("/asyncapi.json")
    async def asyncapi() -> dict[str, Any]:
        return document

    return router

"""One chat turn is one trace: the gateway's frame, the outbox publish, the worker, the model
call and the reply frames back, with analytics ingestion linked to it."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.gateway.conftest import expected_reply_text, open_socket
from tests.observability.conftest import ObservedPlatform, ReceivedSpan

pytestmark = pytest.mark.e2e

SPAN_TIMEOUT_S = 20.0


async def wait_for_spans(
    platform: ObservedPlatform, trace_id: str, names: set[str]
) -> dict[str, ReceivedSpan]:
    deadline = time.monotonic() + SPAN_TIMEOUT_S
    while True:
        spans = {s.name: s for s in platform.otlp.unique() if s.trace_id == trace_id}
        if names <= spans.keys():
            return spans
        if time.monotonic() > deadline:
            raise AssertionError(f"spans missing: {sorted(names - spans.keys())}; got {spans}")
        await asyncio.sleep(0.05)


async def test_one_chat_turn_is_one_trace_across_every_process(observed: ObservedPlatform) -> None:
    user = observed.new_user()
    socket = await open_socket(observed.gateway, user)
    try:
        started = await socket.request(
            {"type": "start_conversation", "title": "traced"}, "conversation.started"
        )
        prompt = "trace this turn"
        await socket.send(
            {
                "type": "send_message",
                "conversation_id": started["conversation_id"],
                "content": prompt,
                "client_message_id": "t1",
            }
        )
        completed, _ = await socket.recv_until("reply.completed", timeout_s=30)
        assert completed["content"] == expected_reply_text(prompt)
    finally:
        await socket.close()

    # The turn's root: the gateway's span for the send_message frame.
    deadline = time.monotonic() + SPAN_TIMEOUT_S
    while True:
        roots = [
            s
            for s in observed.otlp.unique()
            if s.name == "ws send_message"
            and s.service == "gateway"
            and s.attributes.get("conversation_id") == started["conversation_id"]
        ]
        if roots or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert len(roots) == 1, roots
    root = roots[0]
    # A turn is its own trace, linked to FastAPI's span for the (long-lived) socket.
    assert root.parent_span_id == ""
    assert len(root.links) == 1 and root.links[0][0] != root.trace_id
    assert root.kind == Span.SPAN_KIND_SERVER

    spans = await wait_for_spans(
        observed,
        root.trace_id,
        {
            "message.sent publish",
            "chat.requests process",
            "chat.completions",
            "reply.completed publish",
            "reply.started deliver",
            "reply.completed deliver",
        },
    )
    publish = spans["message.sent publish"]
    process = spans["chat.requests process"]
    model = spans["chat.completions"]
    delivered = spans["reply.completed deliver"]
    # Parent links in the order the turn travelled: gateway → outbox publish → worker → model,
    # and the reply frames back to the gateway under the worker's span.
    assert (publish.service, publish.parent_span_id) == ("gateway", root.span_id)
    assert (process.service, process.parent_span_id) == ("chat_worker", publish.span_id)
    assert (model.service, model.parent_span_id) == ("chat_worker", process.span_id)
    assert (delivered.service, delivered.parent_span_id) == ("gateway", process.span_id)
    assert spans["reply.completed publish"].parent_span_id == process.span_id
    assert model.kind == Span.SPAN_KIND_CLIENT
    assert process.kind == Span.SPAN_KIND_CONSUMER

    # Analytics ingests the turn's events in batches: its span links to the published events.
    linked_to = {publish.span_id, spans["reply.completed publish"].span_id}
    deadline = time.monotonic() + SPAN_TIMEOUT_S
    while True:
        ingest_links = {
            span_id
            for s in observed.otlp.unique()
            if s.service == "analytics_consumer" and s.name == "analytics.events ingest"
            for trace_id, span_id in s.links
            if trace_id == root.trace_id
        }
        if linked_to <= ingest_links or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert linked_to <= ingest_links


def test_log_lines_carry_the_active_span(caplog: pytest.LogCaptureFixture) -> None:
    """With tracing on, a JSON log line written inside a span names its trace and span."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    from shared import tracing
    from shared.logging import _StructuredFormatter

    provider = TracerProvider()
    tracer = provider.get_tracer("test")
    formatter = _StructuredFormatter("gateway", "json")
    record = logging.makeLogRecord({"msg": "outside", "levelname": "INFO"})
    assert "trace_id" not in json.loads(formatter.format(record))
    previous = tracing._enabled
    tracing._enabled = True
    try:
        with tracer.start_as_current_span("work") as span:
            line = json.loads(formatter.format(logging.makeLogRecord({"msg": "inside"})))
            context = span.get_span_context()
    finally:
        tracing._enabled = previous
        provider.shutdown()
    assert line["trace_id"] == format(context.trace_id, "032x")
    assert line["span_id"] == format(context.span_id, "016x")
    assert trace.get_current_span().get_span_context().is_valid is False

"""OpenTelemetry traces: one trace per chat turn, its context carried in AMQP headers.

Off by default. `configure_tracing` installs the SDK only when the standard OTEL settings ask
for an exporter (`OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, or
`OTEL_TRACES_EXPORTER=otlp`); everything else about the exporter, sampler and batching is read
from `OTEL_*` by the SDK itself. While it is off, every helper here returns at its first line:
no span objects, no header parsing, no `traceparent` stored with outbox rows.

The carrier is W3C trace context (`traceparent`, `tracestate`), in AMQP message headers and in
the outbox row of an event (so the relay that publishes the row continues the trace of the
request that wrote it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.trace import Link, SpanKind

TRACER_NAME = "convoai"

_enabled = False


def tracing_enabled() -> bool:
    return _enabled


def exporter_requested(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the OTEL settings in `environ` ask for traces to be exported."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters == "none":
        return False
    return "otlp" in exporters or bool(
        environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def configure_tracing(service: str, instance_id: str | None = None) -> bool:
    """Install the SDK with an OTLP/HTTP exporter if the environment asks for one."""
    global _enabled
    if not exporter_requested():
        return False
    # Imported here: a process without tracing never loads the SDK.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    attributes = {"service.name": os.environ.get("OTEL_SERVICE_NAME") or service}
    if instance_id:
        attributes["service.instance.id"] = instance_id
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    _enabled = True
    return True


def _tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def span(name: str, kind: SpanKind = SpanKind.INTERNAL, **attributes: Any) -> Any:
    """A child span of the current one (a no-op context manager while tracing is off)."""
    if not _enabled:
        return nullcontext()
    return _tracer().start_as_current_span(name, kind=kind, attributes=attributes or None)


def turn_span(name: str, attributes: Mapping[str, str] | None = None) -> Any:
    """The root span of a new trace, linked to the current span (a no-op while off).

    For a frame on a WebSocket: FastAPI's span for the connection lives as long as the socket,
    and every turn under it would make one trace of a whole session; a turn is its own trace.
    """
    if not _enabled:
        return nullcontext()
    current = trace.get_current_span().get_span_context()
    return _tracer().start_as_current_span(
        name,
        context=context.Context(),
        kind=SpanKind.SERVER,
        links=[Link(current)] if current.is_valid else None,
        attributes=attributes or None,
    )


def current_traceparent() -> str | None:
    """The active span's context as a `traceparent` value, to store with an outbox row."""
    if not _enabled:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


def inject_headers() -> dict[str, Any] | None:
    """Headers carrying the active span's context to the next hop (None while off)."""
    if not _enabled:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier or None


@contextmanager
def producer_span(name: str, traceparent: str | None, **attributes: Any) -> Iterator[Any]:
    """A PRODUCER span continuing the stored `traceparent`; yields the headers to publish."""
    if not _enabled:
        yield None
        return
    parent = propagate.extract({"traceparent": traceparent}) if traceparent else None
    with _tracer().start_as_current_span(
        name, context=parent, kind=SpanKind.PRODUCER, attributes=attributes or None
    ):
        yield inject_headers()


@contextmanager
def consumer_span(
    name: str,
    headers: Mapping[str, Any] | None,
    *,
    traced_only: bool = False,
    **attributes: Any,
) -> Iterator[None]:
    """A CONSUMER span whose parent is the context in a delivery's `headers`; with
    `traced_only`, none for a delivery that carries no context (a reply's delta frames)."""
    if not _enabled or (traced_only and not (headers and "traceparent" in headers)):
        yield
        return
    carrier = {k: v for k, v in (headers or {}).items() if isinstance(v, str)}
    parent = propagate.extract(carrier)
    token = context.attach(parent)
    try:
        with _tracer().start_as_current_span(
            name, kind=SpanKind.CONSUMER, attributes=attributes or None
        ):
            yield
    finally:
        context.detach(token)


@contextmanager
def linked_span(
    name: str, headers: Iterator[Mapping[str, Any] | None], **attributes: Any
) -> Iterator[None]:
    """A CONSUMER span for a batch, linked to the trace of each delivery in it."""
    if not _enabled:
        yield
        return
    links = []
    for carrier in headers:
        parent = trace.get_current_span(
            propagate.extract({k: v for k, v in (carrier or {}).items() if isinstance(v, str)})
        ).get_span_context()
        if parent.is_valid:
            links.append(Link(parent))
    with _tracer().start_as_current_span(
        name, kind=SpanKind.CONSUMER, links=links, attributes=attributes or None
    ):
        yield


def log_fields() -> dict[str, str]:
    """`trace_id`/`span_id` of the active span for a log line (empty when there is none)."""
    if not _enabled:
        return {}
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return {}
    return {
        "trace_id": format(span_context.trace_id, "032x"),
        "span_id": format(span_context.span_id, "016x"),
    }

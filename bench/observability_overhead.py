"""Observability overhead per chat turn: the CPU the metrics hooks and the tracing of one turn
cost, measured in-process with the real code (prints one JSON object).

A chat turn touches, across the processes: the gateway's frame counters (one frame in, about
five out), the worker's reply observation, analytics' batch observation (three events); with
tracing on, the spans of a turn (frame, outbox publish, chat.requests, model call, two reply
frames back, two reply events published, the analytics batch) with their header injection and
extraction, exported over OTLP/HTTP by the SDK's batch processor to a local sink. The end-to-end
chat benchmark (bench/chat_load.py) measures the whole stack; this isolates what observability
adds, which on a busy machine is below the end-to-end run's noise.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.trace import SpanKind

from services.analytics_consumer import metrics as analytics_metrics
from services.chat_worker.metrics import observe_reply_outcome
from services.gateway import metrics as gateway_metrics
from shared import tracing
from shared.events import ReplyCompleted


def metrics_of_one_turn(event: ReplyCompleted) -> None:
    gateway_metrics.FRAMES_RECEIVED.labels("send_message").inc()
    for _ in range(5):  # ack, reply.started, deltas, reply.completed
        gateway_metrics.FRAMES_SENT.inc()
    observe_reply_outcome(event)
    analytics_metrics.observe_committed(["message.sent", "reply.started", "reply.completed"], 0.05)


def spans_of_one_turn() -> None:
    with tracing.turn_span("ws send_message", {"conversation_id": "c" * 12}):
        stored = tracing.current_traceparent()
    with tracing.producer_span("message.sent publish", stored) as headers:
        pass
    with tracing.consumer_span("chat.requests process", headers):
        with tracing.span("chat.completions", SpanKind.CLIENT, model="m"):
            tracing.inject_headers()  # to the model endpoint
        frames = [tracing.inject_headers(), tracing.inject_headers()]
        events = [tracing.current_traceparent(), tracing.current_traceparent()]
    for frame_headers in frames:
        with tracing.consumer_span("reply deliver", frame_headers, traced_only=True):
            pass
    published = []
    for traceparent in events:
        with tracing.producer_span("reply publish", traceparent) as event_headers:
            published.append(event_headers)
    with tracing.linked_span("analytics.events ingest", iter([headers, *published])):
        pass


def cpu_per_turn_us(turn: Any, turns: int) -> float:
    for _ in range(200):  # warm up
        turn()
    started = time.process_time()
    for _ in range(turns):
        turn()
    return (time.process_time() - started) * 1e6 / turns


class _Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--turns", type=int, default=5000, help="turns per measurement")
    args = parser.parse_args()
    event = ReplyCompleted(
        producer="bench",
        conversation_id="c" * 12,
        message_id="m" * 10,
        reply_to="r" * 10,
        model="mock",
        prompt_tokens=10,
        completion_tokens=24,
        ttft_ms=12.5,
        duration_ms=80.0,
        finish_reason="stop",
    )
    result: dict[str, Any] = {"turns": args.turns}
    result["metrics_us_per_turn"] = round(
        cpu_per_turn_us(lambda: metrics_of_one_turn(event), args.turns), 2
    )
    result["tracing_off_us_per_turn"] = round(cpu_per_turn_us(spans_of_one_turn, args.turns), 2)

    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{sink.server_address[1]}"
    os.environ["OTEL_TRACES_SAMPLER"] = "always_on"
    assert tracing.configure_tracing("bench")
    from opentelemetry import trace

    provider: Any = trace.get_tracer_provider()
    started = time.process_time()
    for _ in range(args.turns):
        spans_of_one_turn()
    provider.force_flush()
    # Includes the batch processor's export thread: serialising and sending every span.
    on = (time.process_time() - started) * 1e6 / args.turns
    result["tracing_on_us_per_turn"] = round(on, 2)
    result["spans_per_turn"] = 10
    provider.shutdown()
    sink.shutdown()
    print(json.dumps(result))


if __name__ == "__main__":
    main()

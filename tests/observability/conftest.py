"""A platform of real processes with tracing on, exporting to an OTLP/HTTP receiver in the test.

The receiver is a real HTTP server speaking the OTLP protocol (protobuf over HTTP, what the
SDK's exporter sends): every process's spans arrive here exactly as a collector would see them.
The platform has its own database and broker namespace: analytics counts everything in its
namespace, and the metrics tests compare counts with the work they did.
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from prometheus_client.parser import text_string_to_metric_families

from services.registry import MIGRATED_SCHEMAS
from shared.broker import delete_topology
from shared.migrations import upgrade_to_head
from shared.topology import Topology
from tests.gateway.conftest import User, mint_token
from tests.infra import TestInfrastructure, create_database, drop_database, new_run_id
from tests.processes import ServiceProcess


@dataclass
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    links: tuple[tuple[str, str], ...]
    """(trace id, span id) of each linked span."""
    attributes: dict[str, str]


class OtlpReceiver:
    """Collects spans POSTed to `/v1/traces` by any number of processes."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver._add(request)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _add(self, request: ExportTraceServiceRequest) -> None:
        received = []
        for resource_spans in request.resource_spans:
            service = next(
                (
                    a.value.string_value
                    for a in resource_spans.resource.attributes
                    if a.key == "service.name"
                ),
                "?",
            )
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    received.append(
                        ReceivedSpan(
                            service=service,
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            kind=span.kind,
                            links=tuple((ln.trace_id.hex(), ln.span_id.hex()) for ln in span.links),
                            attributes={a.key: a.value.string_value for a in span.attributes},
                        )
                    )
        with self._lock:
            self.spans.extend(received)

    def unique(self) -> list[ReceivedSpan]:
        """Each span once (an exporter retrying a slow export sends a batch again)."""
        seen: dict[tuple[str, str], ReceivedSpan] = {}
        for span in self.snapshot():
            seen.setdefault((span.trace_id, span.span_id), span)
        return list(seen.values())

    def snapshot(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self.spans)

    def start(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class ObservedPlatform:
    infra: TestInfrastructure
    otlp: OtlpReceiver
    gateway: ServiceProcess
    worker: ServiceProcess
    analytics: ServiceProcess
    mock_llm: ServiceProcess
    new_user: Callable[[], User]

    def processes(self) -> dict[str, ServiceProcess]:
        return {
            "gateway": self.gateway,
            "chat_worker": self.worker,
            "analytics_consumer": self.analytics,
        }


@pytest.fixture(scope="package")
def otlp() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="package")
async def observed(
    _server_urls: tuple[str, str], infra: TestInfrastructure, otlp: OtlpReceiver
) -> AsyncIterator[ObservedPlatform]:
    server_url, _ = _server_urls
    db_name = f"convoai_test_{new_run_id()}_obs"
    own = dataclasses.replace(
        infra,
        database_url=await create_database(server_url, db_name),
        namespace=f"{infra.namespace}ob",
        jwt_secret=secrets.token_urlsafe(48),
    )
    await upgrade_to_head(own.database_url, MIGRATED_SCHEMAS)
    tracing_env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_SAMPLER": "always_on",
        # Spans leave within a tenth of a second instead of the default five.
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        # Queue depth and outbox gauges sampled often enough for a short test.
        "CONVOAI_QUEUE_MONITOR_INTERVAL_S": "0.5",
    }
    processes: list[ServiceProcess] = []

    def start(service: str, **env: str) -> ServiceProcess:
        process = ServiceProcess(
            service, own.env(**tracing_env, **env), instance_id=f"ob-{service}"
        )
        processes.append(process)
        return process.start()

    def new_user() -> User:
        user_id = uuid.uuid4().hex[:16]
        username = f"obs{user_id[:8]}"
        return User(user_id, username, mint_token(own, user_id, username))

    try:
        mock_llm = start("mock_llm")
        yield ObservedPlatform(
            infra=own,
            otlp=otlp,
            mock_llm=mock_llm,
            analytics=start("analytics_consumer"),
            gateway=start(
                "gateway",
                CONVOAI_MESSAGES_PER_MINUTE="100000",
                CONVOAI_WS_FRAMES_PER_SECOND="100000",
                CONVOAI_WS_FRAME_BURST="100000",
            ),
            worker=start("chat_worker", CONVOAI_LLM_BASE_URL=f"{mock_llm.url}/v1"),
            new_user=new_user,
        )
    finally:
        for process in reversed(processes):
            process.stop()
        await delete_topology(own.amqp_url, Topology(own.namespace))
        await drop_database(server_url, db_name)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(process: ServiceProcess) -> Samples:
    """Every sample of the process's `/metrics`, keyed by (name, sorted labels)."""
    response = httpx.get(f"{process.url}/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)

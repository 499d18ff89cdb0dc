"""deploy/nginx.conf in a real nginx, with loopback stub upstreams in place of the containers.

Skipped where nginx is not installed (`apt-get install nginx-light`); test_compose.py checks the
same routes by reading the file. Load-balancing over two gateway replicas needs Docker's DNS and
is not exercised here.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

import pytest
from websockets.http11 import Request, Response
from websockets.sync.client import connect
from websockets.sync.server import Server, ServerConnection, serve
from websockets.typing import Origin

from tests.deploy.compose_model import DEPLOY
from tests.processes import free_port, wait_until

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
)
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed")

UPSTREAM_VARIABLES = {
    "gateway_upstream": "gateway",
    "auth_upstream": "auth",
    "analytics_upstream": "analytics_consumer",
}


def stub_upstream(name: str) -> Server:
    """Answers GETs with what it received and echoes WebSocket messages, tagged with `name`."""

    def describe(connection: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        body = {
            "upstream": name,
            "path": request.path,
            "x_forwarded_for": request.headers.get("X-Forwarded-For"),
            "x_forwarded_proto": request.headers.get("X-Forwarded-Proto"),
        }
        response = connection.respond(HTTPStatus.OK, json.dumps(body))
        response.headers["Content-Type"] = "application/json"
        return response

    def echo(connection: ServerConnection) -> None:
        path = connection.request.path if connection.request else ""
        for message in connection:
            text = message if isinstance(message, str) else message.decode()
            connection.send(f"{name}:{path}:{text}")

    server = serve(echo, "127.0.0.1", 0, process_request=describe)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@dataclass
class Proxy:
    url: str
    access_log: Path


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    assert NGINX is not None
    workdir = tmp_path_factory.mktemp("nginx")
    stubs = {variable: stub_upstream(name) for variable, name in UPSTREAM_VARIABLES.items()}
    config = (DEPLOY / "nginx.conf").read_text()
    for variable, stub in stubs.items():
        config, count = re.subn(
            rf"set \${variable} [^;]+;",
            f"set ${variable} 127.0.0.1:{stub.socket.getsockname()[1]};",
            config,
        )
        assert count == 1, f"nginx.conf no longer sets ${variable}"
    port = free_port()
    config, count = re.subn(r"listen \d+;", f"listen 127.0.0.1:{port};", config)
    assert count == 1
    access_log = workdir / "access.log"
    config = config.replace("access_log /dev/stdout", f"access_log {access_log}")
    (workdir / "nginx.conf").write_text(config)
    process = subprocess.Popen(
        [
            NGINX,
            "-p",
            str(workdir),
            "-c",
            str(workdir / "nginx.conf"),
            "-g",
            f"daemon off; pid {workdir}/nginx.pid;",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        try:
            with urllib.request.urlopen(f"{url}/proxy-health", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    try:
        wait_until(answers, timeout_s=15, message="nginx did not start")
        yield Proxy(url, access_log)
    finally:
        process.terminate()
        process.wait(timeout=15)
        for stub in stubs.values():
            stub.shutdown()


@pytest.mark.parametrize(
    ("path", "upstream"),
    [
        ("/auth/token", "auth"),
        ("/auth/me", "auth"),
        ("/users/?search=ann", "auth"),
        ("/users/u123", "auth"),
        ("/api/v1/analytics/summary", "analytics_consumer"),
        ("/api/v1/analytics/users/top?by=tokens", "analytics_consumer"),
        ("/conversations/?q=x", "gateway"),
        ("/assistants/", "gateway"),
        ("/", "gateway"),
        ("/health", "gateway"),
    ],
)
def test_each_path_reaches_its_service_unchanged(proxy: Proxy, path: str, upstream: str) -> None:
    with urllib.request.urlopen(f"{proxy.url}{path}", timeout=5) as response:
        body = json.loads(response.read())
    assert body["upstream"] == upstream
    assert body["path"] == path, "the proxy must pass the URI through as the client sent it"
    assert body["x_forwarded_for"] == "127.0.0.1"
    assert body["x_forwarded_proto"] == "http"


def test_websocket_upgrades_through_to_the_gateway(proxy: Proxy) -> None:
    ws_url = proxy.url.replace("http://", "ws://") + "/ws?token=secret-token-value"
    with connect(ws_url, origin=Origin("http://localhost:8080"), open_timeout=5) as socket:
        for n in range(3):
            socket.send(f"frame {n}")
            assert socket.recv(timeout=5) == f"gateway:/ws?token=secret-token-value:frame {n}"


def test_access_log_omits_the_token_in_the_query_string(proxy: Proxy) -> None:
    with urllib.request.urlopen(f"{proxy.url}/conversations/?token=secret-token-value", timeout=5):
        pass

    def logged() -> str | None:
        text = proxy.access_log.read_text() if proxy.access_log.exists() else ""
        return text if "/conversations/" in text else None

    log = wait_until(logged, timeout_s=5, message="nginx wrote no access log line")
    assert "secret-token-value" not in log


def test_a_forged_forwarded_for_header_does_not_reach_the_services(proxy: Proxy) -> None:
    """The services trust only the proxy; the proxy must not pass on what the client wrote."""
    request = urllib.request.Request(
        f"{proxy.url}/auth/token", headers={"X-Forwarded-For": "203.0.113.9, 198.51.100.7"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        body = json.loads(response.read())
    assert body["x_forwarded_for"] == "127.0.0.1"

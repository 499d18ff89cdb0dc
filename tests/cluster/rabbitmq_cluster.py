"""A three-node RabbitMQ cluster on this host, beside the machine's own broker, and HAProxy in
front of it: what the failover tests run the platform against.

Every node gets free AMQP and distribution ports, a node name of its own and a data directory
under a temporary directory, so two runs (or a developer's own broker) never collide. The nodes
run as the `rabbitmq` user when the tests run as root (the Erlang cookie is that user's), and as
the current user otherwise. The nodes form the cluster by themselves (peer discovery from their
config) and the test asks the management API, not the CLI, which node leads a queue or holds a
connection: each CLI call boots an Erlang VM, tens of seconds on a busy 2-core machine.
`python -m tests.cluster.rabbitmq_cluster` starts one by hand and prints its addresses.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.processes import free_port, wait_until

NODE_START_TIMEOUT_S = 90.0
LAUNCH_TIMEOUT_S = 120.0
"""`rabbitmq-server -detached` returns once the VM is spawned, not booted."""


class ClusterUnavailable(RuntimeError):
    """This machine cannot run the cluster (no RabbitMQ server or HAProxy installed)."""


def missing_tools() -> list[str]:
    """The executables a cluster needs that this machine lacks."""
    tools = ("rabbitmq-server", "haproxy")
    return [t for t in tools if shutil.which(t) is None]


def _as_broker_user(argv: list[str], env: dict[str, str]) -> list[str]:
    """Run as `rabbitmq` when root: the node's files and the Erlang cookie belong to it."""
    if os.geteuid() != 0:
        return argv
    assignments = [f"{k}={v}" for k, v in env.items()]
    return ["runuser", "-u", "rabbitmq", "--", "env", *assignments, *argv]


@dataclass
class Node:
    number: int
    base: Path
    tag: str
    amqp_port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    management_port: int = field(default_factory=free_port)

    @property
    def name(self) -> str:
        return f"c{self.number}-{self.tag}@localhost"

    @property
    def dir(self) -> Path:
        return self.base / f"c{self.number}"

    def env(self) -> dict[str, str]:
        return {
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_PID_FILE": str(self.dir / "pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq"),
            "RABBITMQ_CONF_ENV_FILE": str(self.base / "env.conf"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def pid(self) -> int | None:
        try:
            return int((self.dir / "pid").read_text().strip())
        except (OSError, ValueError):
            return None


class RabbitCluster:
    """Nodes 1..size joined into one cluster, HAProxy on `amqp_url` in front of them."""

    def __init__(self, size: int = 3) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="convoai-rmqc-"))
        tag = secrets.token_hex(3)
        self.nodes = [Node(n, self.base, tag) for n in range(1, size + 1)]
        self.balancer_port = free_port()
        self._haproxy: subprocess.Popen[bytes] | None = None

    @property
    def amqp_url(self) -> str:
        """The balancer: one address for every client; it sends each connection to a live node."""
        return f"amqp://guest:guest@127.0.0.1:{self.balancer_port}/"

    def node_url(self, number: int) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.nodes[number - 1].amqp_port}/"

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Boot the three nodes at once; they form one cluster by themselves (classic config
        peer discovery), which spares a dozen CLI calls (each boots an Erlang VM: seconds)."""
        missing = missing_tools()
        if missing:
            raise ClusterUnavailable(f"not installed: {', '.join(missing)}")
        (self.base / "plugins").write_text("[rabbitmq_management].\n")
        (self.base / "env.conf").write_text("")
        peers = "".join(
            f"cluster_formation.classic_config.nodes.{n.number} = {n.name}\n" for n in self.nodes
        )
        for node in self.nodes:
            (node.dir / "mnesia").mkdir(parents=True)
            (node.dir / "log").mkdir(parents=True)
            (node.dir / "rabbitmq.conf").write_text(
                "loopback_users = none\n"
                "cluster_formation.peer_discovery_backend = classic_config\n"
                f"{peers}"
                "management.tcp.ip = 127.0.0.1\n"
                f"management.tcp.port = {node.management_port}\n"
                # Consumer counts come from these statistics: fresh within 2 s.
                "collect_statistics_interval = 2000\n"
            )
        if os.geteuid() == 0:
            shutil.chown(self.base, "rabbitmq", "rabbitmq")
            for path in self.base.rglob("*"):
                shutil.chown(path, "rabbitmq", "rabbitmq")
        for node in self.nodes:
            self._launch(node)
        for node in self.nodes:
            self._await_startup(node)
        wait_until(
            lambda: self._running_nodes() == {n.name for n in self.nodes},
            NODE_START_TIMEOUT_S,
            0.5,
            "the nodes did not form one cluster",
        )
        self._start_balancer()

    def stop(self) -> None:
        if self._haproxy is not None and self._haproxy.poll() is None:
            self._haproxy.kill()
            self._haproxy.wait()
        for node in self.nodes:
            self.kill(node.number)
        shutil.rmtree(self.base, ignore_errors=True)

    def kill(self, number: int) -> None:
        """`kill -9` node `number`: no goodbye to clients or peers."""
        node = self.nodes[number - 1]
        pid = node.pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        (node.dir / "pid").unlink(missing_ok=True)
        wait_until(lambda: not _alive(pid), 10, 0.05, f"node {node.name} did not die")

    def revive(self, number: int) -> None:
        node = self.nodes[number - 1]
        self._launch(node)
        self._await_startup(node)

    # --- questions about the cluster --------------------------------------------------------

    def running(self, number: int) -> bool:
        pid = self.nodes[number - 1].pid()
        return pid is not None and _alive(pid)

    def any_running(self) -> Node:
        for node in self.nodes:
            if self.running(node.number):
                return node
        raise RuntimeError("no node of the cluster is running")

    def leader_of(self, queue: str) -> int:
        """The number of the node leading quorum queue `queue`."""
        info = self._api(f"/api/queues/%2F/{queue}")
        return self._number_of(info["leader"])

    def consumers_of(self, queue: str) -> int:
        """How many consumers `queue` has (0 when it does not exist)."""
        for info in self._api("/api/queues"):
            if info["name"] == queue:
                consumers: int = info.get("consumers", 0)
                return consumers
        return 0

    def node_of_connection(self, connection_name: str) -> int:
        """The node holding the client connection named `connection_name` (client property)."""
        for connection in self._api("/api/connections"):
            if connection.get("client_properties", {}).get("connection_name") == connection_name:
                return self._number_of(connection["node"])
        raise LookupError(f"connection {connection_name} not found")

    def _api(self, path: str) -> Any:
        """The management HTTP API of a running node: answers in milliseconds, unlike the CLI."""
        node = self.any_running()
        response = httpx.get(
            f"http://127.0.0.1:{node.management_port}{path}", auth=("guest", "guest"), timeout=30
        )
        response.raise_for_status()
        return response.json()

    def _running_nodes(self) -> set[str]:
        try:
            return {n["name"] for n in self._api("/api/nodes") if n.get("running")}
        except (httpx.HTTPError, RuntimeError):
            return set()

    # --- internals ------------------------------------------------------------------------

    def _number_of(self, node_name: str) -> int:
        for node in self.nodes:
            if node.name == node_name:
                return node.number
        raise LookupError(node_name)

    def _launch(self, node: Node) -> None:
        (node.dir / "pid").unlink(missing_ok=True)
        subprocess.run(
            _as_broker_user(["rabbitmq-server", "-detached"], node.env()),
            check=True,
            timeout=LAUNCH_TIMEOUT_S,
            capture_output=True,
        )

    def _await_startup(self, node: Node) -> None:
        """Booted: the management listener opens after the AMQP one, at the end of the boot."""

        def answering() -> bool:
            pid = node.pid()
            if pid is not None and not _alive(pid):
                raise RuntimeError(f"{node.name} exited; logs in {node.dir / 'log'}")
            try:
                response = httpx.get(
                    f"http://127.0.0.1:{node.management_port}/api/overview",
                    auth=("guest", "guest"),
                    timeout=5,
                )
            except httpx.HTTPError:
                return False
            return response.status_code == 200 and _port_open(node.amqp_port)

        wait_until(answering, NODE_START_TIMEOUT_S, 0.25, f"{node.name} did not start")

    def _start_balancer(self) -> None:
        config = self.base / "haproxy.cfg"
        servers = "\n".join(
            f"    server c{n.number} 127.0.0.1:{n.amqp_port} check inter 500 fall 1 rise 2"
            for n in self.nodes
        )
        config.write_text(HAPROXY_CONFIG.format(port=self.balancer_port, servers=servers))
        self._haproxy = subprocess.Popen(
            ["haproxy", "-f", str(config), "-db"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: _port_open(self.balancer_port), 10, 0.05, "haproxy did not listen")


HAPROXY_CONFIG = """\
# The one address every client dials. A dead node is marked down within a second; its client
# connections are cut at once (on-marked-down), so they reconnect here and land on a live node.
global
    maxconn 4096
defaults
    mode tcp
    timeout connect 2s
    timeout client 3h
    timeout server 3h
    retries 2
    option redispatch
listen amqp
    bind 127.0.0.1:{port}
    balance roundrobin
    default-server on-marked-down shutdown-sessions
{servers}
"""


def _port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 1).close()
    except OSError:
        return False
    return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not Path(f"/proc/{pid}/status").read_text().count("State:\tZ")


if __name__ == "__main__":
    cluster = RabbitCluster()
    # SIGTERM as well as Ctrl-C stops the nodes and removes their data.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        started = time.monotonic()
        cluster.start()
        print(f"cluster up in {time.monotonic() - started:.1f}s: {cluster.amqp_url}", flush=True)
        for n in cluster.nodes:
            print(f"  node {n.number}: {n.name} amqp {n.amqp_port}", flush=True)
        signal.pause()
    finally:
        cluster.stop()

"""`convoai up` brings the whole platform up, and Ctrl-C takes all of it down."""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from services.runner import plan_children
from tests.processes import wait_until

pytestmark = pytest.mark.e2e


def _ports_free(ports: list[int]) -> bool:
    for port in ports:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return False
    return True


def _processes_with(marker: str) -> list[int]:
    """Pids whose command line contains `marker` (stand-in for `pgrep -f`)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline:
            pids.append(int(entry.name))
    return pids


def test_up_starts_every_process_and_sigint_stops_them_all(infra, tmp_path):
    for _ in range(20):
        offset = random.randrange(10000, 24000, 100)
        children = plan_children(workers=2, host="127.0.0.1", llm_key="", port_offset=offset)
        if _ports_free([c.port for c in children]):
            break
    log = (tmp_path / "up.log").open("wb")
    env = infra.env()
    env.pop("CONVOAI_LLM_API_KEY", None)
    runner = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up", "--port-offset", str(offset)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        def all_healthy() -> bool:
            assert runner.poll() is None, (tmp_path / "up.log").read_text()
            try:
                return all(httpx.get(c.health_url, timeout=1).status_code == 200 for c in children)
            except httpx.HTTPError:
                return False

        wait_until(all_healthy, timeout_s=60, interval_s=0.2, message="stack not healthy in 60s")
        names = {c.name for c in children}
        assert names == {
            "mock_llm",
            "auth",
            "analytics",
            "gateway",
            "chat_worker-1",
            "chat_worker-2",
            "knowledge_worker",
        }
        marker = f"--port {children[0].port}"
        assert _processes_with(marker), "mock_llm child not found"

        runner.send_signal(signal.SIGINT)
        assert runner.wait(60) == 0
    finally:
        if runner.poll() is None:
            runner.kill()
    output = (tmp_path / "up.log").read_text()
    assert "[up] ConvoAI is running" in output
    assert "[up] stopped" in output
    leftovers = [pid for c in children for pid in _processes_with(f"--port {c.port} ")]
    assert leftovers == [], f"orphan processes: {leftovers}"
    assert _ports_free([c.port for c in children])

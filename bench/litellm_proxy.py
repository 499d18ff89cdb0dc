"""LiteLLM's proxy in front of mock_llm: chat_cost.py's `direct_to_model` clients through it.

The reference point of issue 17: what a widely used Python LLM proxy costs in front of the same
model, next to ConvoAI's cost per turn. `through_litellm` starts the proxy of the `[bench]`
extra (`pip install -e '.[bench]'`; without it the result says so and nothing runs) as a
process group of its own on a free port: one model routed to `openai/<model>` at mock_llm's
`/v1`, no database, a master key made for the run (the proxy refuses to start without one),
log level ERROR (no access log), and every download it would make at start (model cost map,
blog posts, beta headers, …) and its telemetry turned off: this machine reaches no web.
Once `/health/readiness` answers, the clients warm up, then stream back to back for the
measured window: requests/s, every reply checked for a finish_reason, and CPU-ms per request
of the proxy's processes and of mock_llm (the process listening on its port) from
/proc/<pid>/stat utime+stime. The proxy's process group is killed at the end, whatever happens,
and the kernel kills the proxy if this process dies first.

Alone, against a running mock_llm (zero delay; its defaults are 24-token replies):

    .venv/bin/convoai serve mock_llm --port 8709 &
    .venv/bin/python bench/litellm_proxy.py --mock-llm http://127.0.0.1:8709 --users 50
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import chat_cost
import httpx
import uvloop

SKIPPED = {"skipped": "install the [bench] extra: pip install -e '.[bench]'"}
PROXY = "litellm proxy"
READY_TIMEOUT_S = 180.0  # imports alone take ~10 s on a busy 2-core machine
STOP_TIMEOUT_S = 15.0
PR_SET_PDEATHSIG = 1  # <sys/prctl.h>
# Off: everything the proxy would fetch from the web (it falls back to its bundled copies) and
# its telemetry; quiet: no line per request, a cost ConvoAI's processes do not pay either.
PROXY_ENVIRONMENT = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOCAL_BLOG_POSTS": "True",
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
    "LITELLM_LOCAL_POLICY_TEMPLATES": "True",
    "LITELLM_LOCAL_AUTOROUTER_PRESETS": "True",
    "LITELLM_TELEMETRY_DISABLED": "true",
    "LITELLM_DONT_SHOW_FEEDBACK_BOX": "True",
    "LITELLM_LOG": "ERROR",
}


def litellm_cli() -> str | None:
    """The `litellm` command of this interpreter's environment, if the extra is installed."""
    return shutil.which("litellm", path=str(Path(sys.executable).parent))


def killed_with_parent() -> Callable[[], object]:
    """For Popen's preexec_fn: the kernel kills the child when this process dies, even by SIGKILL
    or SIGTERM, where no `finally` of ours runs (the child is in a session of its own). libc's
    prctl is looked up here, in the parent: the child only calls it between fork and exec."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    return lambda: prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def listening_pid(port: int) -> int | None:
    """The process with a TCP socket listening on `port`: mock_llm's, to count its CPU."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            listening = fields[3] == "0A"
            if listening and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) in inodes for fd in (entry / "fd").iterdir()):
                return int(entry.name)
        except OSError:
            continue
    return None


def group_processes(group: int) -> dict[str, int]:
    """name → pid of every process in the proxy's process group (one unless it forks workers)."""
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group:
            pid = int(entry.name)
            found[PROXY if pid == group else f"{PROXY} child {pid}"] = pid
    return found


class LiteLLMProxy:
    """The proxy as a process group of its own, from start until it answers, to its kill."""

    def __init__(self, cli: str, mock_url: str) -> None:
        self.cli = cli
        self.mock_url = mock_url
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.master_key = f"sk-{secrets.token_hex(32)}"
        self.startup_s = 0.0
        self._workdir = tempfile.TemporaryDirectory(prefix="litellm-bench-")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def config(self) -> str:
        # JSON is YAML: one model, the name the clients ask for, routed to mock_llm.
        model = {
            "model_name": chat_cost.CLIENT_MODEL,
            "litellm_params": {
                "model": f"openai/{chat_cost.CLIENT_MODEL}",
                "api_base": f"{self.mock_url}/v1",
                "api_key": "bench",
            },
        }
        return json.dumps({"model_list": [model]})

    def log_tail(self, lines: int = 20) -> str:
        log = Path(self._workdir.name, "proxy.log")
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])

    async def __aenter__(self) -> LiteLLMProxy:
        workdir = Path(self._workdir.name)
        (workdir / "config.yaml").write_text(self.config())
        environment = {**os.environ, **PROXY_ENVIRONMENT, "LITELLM_MASTER_KEY": self.master_key}
        environment.pop("DATABASE_URL", None)  # no database, whatever the shell has
        started = time.perf_counter()
        with (workdir / "proxy.log").open("wb") as log:
            self._process = subprocess.Popen(
                [
                    *(self.cli, "--config", "config.yaml"),
                    *("--host", "127.0.0.1", "--port", str(self.port)),
                ],
                cwd=workdir,  # its .env lookup finds nothing of the project's
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=killed_with_parent(),
            )
        try:
            await self._ready()
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.perf_counter() - started
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop()

    async def _ready(self) -> None:
        assert self._process is not None
        deadline = time.perf_counter() + READY_TIMEOUT_S
        async with httpx.AsyncClient(timeout=5) as http:
            while time.perf_counter() < deadline:
                if self._process.poll() is not None:
                    raise RuntimeError(
                        f"the LiteLLM proxy exited with {self._process.returncode}:\n"
                        f"{self.log_tail()}"
                    )
                try:
                    answer = await http.get(f"{self.url}/health/readiness")
                    if answer.status_code == 200 and answer.json().get("status") == "healthy":
                        return
                except httpx.TransportError:
                    pass  # not listening yet
                await asyncio.sleep(0.2)
        raise TimeoutError(
            f"the LiteLLM proxy did not answer in {READY_TIMEOUT_S} s:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """SIGTERM to the whole group; after STOP_TIMEOUT_S, SIGKILL to whatever is left of it."""
        if self._process is not None:
            group = self._process.pid
            with contextlib.suppress(ProcessLookupError):  # none of the group is left
                os.killpg(group, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(STOP_TIMEOUT_S)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)  # what is left, a worker of the leader's too
            self._process.wait()
            self._process = None
        self._workdir.cleanup()


async def through_litellm(
    mock_url: str, users: int, duration_s: float, warm_up_s: float = 3.0
) -> dict[str, Any]:
    """chat_cost.py's `direct_to_model` load through a LiteLLM proxy in front of `mock_url`."""
    cli = litellm_cli()
    if cli is None:
        return SKIPPED
    mock_pid = listening_pid(urlsplit(mock_url).port or 80)
    async with LiteLLMProxy(cli, mock_url) as proxy:
        proxy_processes = group_processes(proxy.pid)
        measured = {**proxy_processes, **({"mock_llm": mock_pid} if mock_pid else {})}
        # The first requests through the proxy build its clients and caches: not measured.
        warm_up = await chat_cost.direct_to_model(
            proxy.url, users, warm_up_s, chat_cost.CpuWindow({}), proxy.master_key
        )
        cpu = chat_cost.CpuWindow(measured)
        result = await chat_cost.direct_to_model(
            proxy.url, users, duration_s, cpu, proxy.master_key, (PROXY, "mock_llm")
        )
        proxy_rss_kib = sum(chat_cost.rss_kib(pid) for pid in proxy_processes.values())
    return {
        "litellm": version("litellm"),
        "proxy": "litellm CLI defaults (uvicorn, 1 worker), no database, master key, log ERROR",
        "proxy_processes": len(proxy_processes),
        "startup_s": round(proxy.startup_s, 1),
        "warm_up_requests": warm_up["requests"],
        "warm_up_replies_without_finish_reason": warm_up["replies_without_finish_reason"],
        **result,
        "proxy_rss_mib_after": round(proxy_rss_kib / 1024, 1),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--mock-llm", default="http://127.0.0.1:8009", help="mock_llm's URL")
    parser.add_argument("--users", type=int, default=50, help="clients streaming back to back")
    parser.add_argument("--duration-s", type=float, default=15.0, help="measured seconds")
    args = parser.parse_args()
    load_average_at_start = os.getloadavg()
    result = await through_litellm(args.mock_llm.rstrip("/"), args.users, args.duration_s)
    print(
        json.dumps(
            {
                "load_average_at_start": load_average_at_start,
                "through_litellm": result,
                "load_average_at_end": os.getloadavg(),
            }
        )
    )


if __name__ == "__main__":
    # The client on uvloop, as chat_cost.py's.
    uvloop.run(main())

"""The README's quick start, run as written against a stack of real processes: the shell block
(curl, jq, `convoai create-admin`, the `python -m websockets` client) and the Python snippet. Only
the ports (this stack's are free ones, not the defaults) and the user's name are changed."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.gateway.conftest import expected_reply_text
from tests.platform.conftest import Platform, running_platform

if TYPE_CHECKING:
    from tests.infra import TestInfrastructure

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
RUN_TIMEOUT_S = 60.0


def readme_block(marker: str) -> str:
    """The code block right after the README's `<!-- marker ... -->` comment."""
    match = re.search(
        rf"^<!-- {marker}\b[^>]*-->\n```\w+\n(.*?)^```$", README.read_text(), re.M | re.S
    )
    assert match, f"README.md has no code block after <!-- {marker} -->"
    return match.group(1)


def for_stack(code: str, stack: Platform, username: str, *, required: tuple[str, ...]) -> str:
    """The README's code pointed at this stack, with a user of its own."""
    replacements = {
        "127.0.0.1:8000": f"127.0.0.1:{stack.gateway.port}",
        "127.0.0.1:8001": f"127.0.0.1:{stack.auth.port}",
        "127.0.0.1:8002": f"127.0.0.1:{stack.analytics.port}",
        ".venv/bin/": f"{Path(sys.executable).parent}/",
        "alice": username,
    }
    for expected in required:
        assert expected in code, f"the README block no longer mentions {expected!r}"
    for old, new in replacements.items():
        code = code.replace(old, new)
    return code


@pytest.fixture(scope="module")
async def stack(
    _server_urls: tuple[str, str], infra: TestInfrastructure
) -> AsyncIterator[Platform]:
    server_url, _ = _server_urls
    async with running_platform(server_url, infra, "qs") as platform:
        yield platform


def frames_in(output: str) -> list[dict[str, Any]]:
    """The JSON objects printed one per line (a WebSocket client prints each frame so)."""
    frames = []
    for line in output.splitlines():
        start, end = line.find("{"), line.rfind("}")
        if start == -1 or end < start:
            continue
        try:
            frames.append(json.loads(line[start : end + 1]))
        except ValueError:
            continue
    return frames


class Interaction:
    """A child process whose output is watched line by line and whose stdin is typed into."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=ROOT,
        )
        self.output: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def wait_for_line(self, matches: Callable[[str], bool], deadline: float) -> str:
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"timed out; output so far:\n{self.text}") from None
            if line is None:
                raise AssertionError(f"the commands ended early:\n{self.text}")
            if matches(line):
                return line

    def type_line(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def end_input(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    def finish(self, deadline: float) -> int:
        try:
            return self.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"the commands did not finish:\n{self.text}") from None

    @property
    def text(self) -> str:
        return "".join(self.output)


def run_shell_quick_start(script: str, env: dict[str, str]) -> str:
    """Run the block as a newcomer would: paste the printed frame into the WebSocket client,
    leave it (Ctrl-D) once the reply is complete, let the remaining commands run."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    shell = Interaction(["bash", "-e", "-o", "pipefail", "-c", script], env)
    try:
        frame = shell.wait_for_line(lambda line: '"type": "send_message"' in line, deadline)
        shell.type_line(frame.strip())
        shell.wait_for_line(lambda line: '"reply.completed"' in line, deadline)
        shell.end_input()
        code = shell.finish(deadline)
    finally:
        if shell.proc.poll() is None:
            shell.proc.kill()
    assert code == 0, f"exit code {code}:\n{shell.text}"
    return shell.text


@pytest.mark.skipif(
    not (shutil.which("curl") and shutil.which("jq")), reason="the quick start needs curl and jq"
)
async def test_the_shell_quick_start_creates_an_admin_signs_up_and_chats(stack: Platform):
    username = f"sh{secrets.token_hex(4)}"
    script = for_stack(
        readme_block("quickstart-shell"),
        stack,
        username,
        required=("127.0.0.1:8000", "127.0.0.1:8001", "127.0.0.1:8002", "alice"),
    )
    env = stack.infra.env()
    output = await asyncio.to_thread(run_shell_quick_start, script, env)

    assert re.search(r"^admin created: admin \(id [\w-]+\)$", output, re.M), output
    frames = frames_in(output)
    registered = [f for f in frames if f.get("username") == username]
    assert registered and "id" in registered[0], f"the user was not registered:\n{output}"
    prompt = next(f["content"] for f in frames if f.get("type") == "send_message")
    completed = [f for f in frames if f.get("type") == "reply.completed"]
    assert len(completed) == 1, output
    assert completed[0]["content"] == expected_reply_text(prompt)
    ready = next(f for f in frames if f.get("type") == "ready")
    assert ready["username"] == username
    summary = next((f for f in frames if "total_users" in f), None)
    assert summary is not None, f"the admin could not read the dashboard:\n{output}"


async def test_the_python_quick_start_streams_a_reply(stack: Platform):
    code = for_stack(
        readme_block("quickstart-python"),
        stack,
        f"py{secrets.token_hex(4)}",
        required=("127.0.0.1:8000", "127.0.0.1:8001", "alice"),
    )
    prompt = re.search(r'chat\("([^"]*)"\)', code)
    assert prompt, 'the snippet no longer calls chat("...")'
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVOAI_")}
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=RUN_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == expected_reply_text(prompt.group(1))


async def test_the_gateway_api_description_links_the_protocol_document(stack: Platform):
    async with httpx.AsyncClient(base_url=stack.gateway.url) as client:
        openapi = (await client.get("/openapi.json")).json()
    assert "docs/websocket-protocol.md" in openapi["info"]["description"]
    assert (ROOT / "docs" / "websocket-protocol.md").is_file()

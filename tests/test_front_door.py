"""The README's run command on a fresh virtualenv without test extras, two stacks side by side,
and a supervisor that restarts a killed chat worker while the rest of the stack keeps running.

Stack A is started exactly as a new user would: `./scripts/up.sh` with `CONVOAI_VENV` naming a
new virtualenv, so a runtime import missing from `pyproject.toml` fails here. Stack B runs from
the test virtualenv at another port offset; both serve a chat turn at the same time.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from services.mock_llm.service import expected_reply
from services.mock_llm.settings import MockLLMSettings
from services.runner import plan_children
from tests.processes import wait_until

# The first test also waits for a virtualenv to be created and the project installed.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parent.parent
INSTALL_AND_START_TIMEOUT_S = 420.0


def _processes_with(marker: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marker in cmdline:
                pids.append(int(entry.name))
    return pids


def _free_offset(taken: set[int]) -> int:
    for _ in range(50):
        # Below Linux's ephemeral range (32768+), where other tests' client sockets live.
        offset = random.randrange(10000, 24000, 100)
        ports = [c.port for c in plan_children(2, "127.0.0.1", "", offset)]
        if offset in taken:
            continue
        if all(_port_free(port) for port in ports):
            return offset
    raise RuntimeError("no free port range for a stack")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@dataclass
class Stack:
    offset: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def gateway(self) -> str:
        return f"http://127.0.0.1:{8000 + self.offset}"

    @property
    def auth(self) -> str:
        return f"http://127.0.0.1:{8001 + self.offset}"

    @property
    def mock_llm(self) -> str:
        return f"http://127.0.0.1:{8009 + self.offset}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def pid_of(self, port: int) -> int:
        pids = _processes_with(f"--port {port} ")
        assert len(pids) == 1, (port, pids)
        return pids[0]

    def running(self) -> bool:
        assert self.process.poll() is None, self.output()
        return "[up] ConvoAI is running" in self.output()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        return self.process.wait(60)


def _start(cmd: list[str], env: dict[str, str], log: Path, offset: int) -> Stack:
    process = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    return Stack(offset, process, log)


@pytest.fixture(scope="module")
def stacks(infra, tmp_path_factory) -> Iterator[tuple[Stack, Stack]]:
    tmp = tmp_path_factory.mktemp("front-door")
    env = infra.env()
    env.pop("CONVOAI_LLM_API_KEY", None)
    offset_a = _free_offset(set())
    offset_b = _free_offset({offset_a})
    fresh_env = {**env, "CONVOAI_VENV": str(tmp / "venv")}
    # A: the README's command, from nothing, one worker (the one this test kills).
    a = _start(
        ["bash", "scripts/up.sh", "--port-offset", str(offset_a), "--workers", "1"],
        fresh_env,
        tmp / "a.log",
        offset_a,
    )
    b = _start(
        [sys.executable, "-m", "services.cli", "up", "--port-offset", str(offset_b)],
        env,
        tmp / "b.log",
        offset_b,
    )
    try:
        wait_until(b.running, timeout_s=90, interval_s=0.2, message="stack B did not start")
        wait_until(
            a.running,
            timeout_s=INSTALL_AND_START_TIMEOUT_S,
            interval_s=0.5,
            message="stack A (fresh virtualenv) did not start",
        )
        yield a, b
    finally:
        codes = (a.stop(), b.stop())
        for stack in (a, b):
            print(f"--- stack at offset {stack.offset}:\n{stack.output()[-4000:]}")
        assert codes == (0, 0), codes
        for stack in (a, b):
            ports = [c.port for c in plan_children(2, "127.0.0.1", "", stack.offset)]
            leftovers = [pid for port in ports for pid in _processes_with(f"--port {port} ")]
            assert leftovers == [], f"orphan processes: {leftovers}"
        _remove_stack_data(infra, (f"p{offset_a}", f"p{offset_b}"))


def _remove_stack_data(infra, suffixes: tuple[str, ...]) -> None:
    import asyncio

    from shared.broker import delete_topology
    from shared.topology import Topology
    from tests.infra import drop_database

    async def remove() -> None:
        for suffix in suffixes:
            database = infra.database_url.rsplit("/", 1)[1]
            await drop_database(infra.database_url, f"{database}_{suffix}")
            await delete_topology(infra.amqp_url, Topology(f"{infra.namespace}-{suffix}"))

    asyncio.run(remove())


@dataclass
class Account:
    token: str
    user_id: str


def _register_and_login(stack: Stack, username: str, password: str) -> Account:
    with httpx.Client(base_url=stack.auth, timeout=10) as client:
        registered = client.post(
            "/auth/register",
            json={"username": username, "email": f"{username}@example.com", "password": password},
        )
        assert registered.status_code == 201, registered.text
        token = client.post("/auth/token", data={"username": username, "password": password})
        assert token.status_code == 200, token.text
    return Account(token.json()["access_token"], registered.json()["id"])


@contextmanager
def _open(stack: Stack, account: Account) -> Iterator[ClientConnection]:
    # The browser Origin of this stack's own gateway port is allowed.
    url = f"ws://127.0.0.1:{8000 + stack.offset}/ws"
    with connect(url, origin=stack.gateway) as ws:  # type: ignore[arg-type]
        ws.send(json.dumps({"type": "auth", "token": account.token}))
        assert _recv_until(ws, "ready")["user_id"] == account.user_id
        yield ws


def _recv_until(ws: ClientConnection, frame_type: str, seen: list[dict[str, Any]] | None = None):
    while True:
        frame = json.loads(ws.recv(timeout=30))
        if seen is not None:
            seen.append(frame)
        assert frame["type"] != "error", frame
        if frame["type"] == frame_type:
            return frame


def _start_conversation(ws: ClientConnection) -> str:
    ws.send(json.dumps({"type": "start_conversation", "title": "front door"}))
    conversation_id: str = _recv_until(ws, "conversation.started")["conversation_id"]
    return conversation_id


def _expected(prompt: str) -> str:
    return expected_reply([{"role": "user", "content": prompt}], MockLLMSettings()).text


def test_two_stacks_serve_a_chat_turn_each_with_separate_data(stacks):
    a, b = stacks
    username, password = f"newcomer{secrets.token_hex(3)}", f"Fresh-{secrets.token_hex(6)}9"
    # The same username registers in both: accounts (and everything else) are per stack.
    accounts = [_register_and_login(stack, username, password) for stack in (a, b)]
    with ExitStack() as opened:
        sockets = [
            opened.enter_context(_open(stack, account))
            for stack, account in zip((a, b), accounts, strict=True)
        ]
        prompts = [f"hello from stack {n} {uuid.uuid4()}" for n in range(2)]
        conversations = [_start_conversation(ws) for ws in sockets]
        for ws, conversation_id, prompt in zip(sockets, conversations, prompts, strict=True):
            ws.send(
                json.dumps(
                    {
                        "type": "send_message",
                        "conversation_id": conversation_id,
                        "content": prompt,
                        "client_message_id": "first",
                    }
                )
            )
        for ws, prompt in zip(sockets, prompts, strict=True):
            assert _recv_until(ws, "reply.completed")["content"] == _expected(prompt)
    # Neither stack sees the other's conversation.
    crossed = ((a, accounts[0], conversations[1]), (b, accounts[1], conversations[0]))
    for stack, account, other in crossed:
        response = httpx.get(
            f"{stack.gateway}/conversations/{other}",
            headers={"Authorization": f"Bearer {account.token}"},
        )
        assert response.status_code == 404


def test_another_stacks_origin_is_refused(stacks):
    a, b = stacks
    with (
        pytest.raises(Exception, match="403"),
        connect(f"ws://127.0.0.1:{8000 + a.offset}/ws", origin=b.gateway),  # type: ignore[arg-type]
    ):
        pass


def test_a_killed_chat_worker_is_restarted_and_its_reply_completes_once(stacks):
    a, _ = stacks
    others = {port: a.pid_of(port) for port in (8000 + a.offset, 8001 + a.offset, 8002 + a.offset)}
    worker_port = 8003 + a.offset
    worker_pid = a.pid_of(worker_port)
    marker = f"slow-{uuid.uuid4()}"
    # A reply long enough to be killed in the middle of: 40 tokens at 20 per second.
    fault = httpx.post(
        f"{a.mock_llm}/_faults",
        json={"match": marker, "tokens_per_second": 20, "reply_tokens": 40, "times": -1},
    )
    assert fault.status_code == 201, fault.text
    account = _register_and_login(a, f"k{secrets.token_hex(4)}", f"Kill-{secrets.token_hex(6)}9")
    with _open(a, account) as ws:
        conversation_id = _start_conversation(ws)
        prompt = f"{marker} tell me a long story"
        ws.send(
            json.dumps(
                {
                    "type": "send_message",
                    "conversation_id": conversation_id,
                    "content": prompt,
                    "client_message_id": "story",
                }
            )
        )
        seen: list[dict[str, Any]] = []
        _recv_until(ws, "reply.delta", seen)
        os.kill(worker_pid, signal.SIGKILL)
        completed = _recv_until(ws, "reply.completed", seen)
    expected = expected_reply(
        [{"role": "user", "content": prompt}], MockLLMSettings(), reply_tokens=40
    ).text
    assert completed["content"] == expected
    assert [f["type"] for f in seen].count("reply.completed") == 1
    wait_until(lambda: "chat_worker-1 restarted" in a.output(), timeout_s=30)
    assert "exited unexpectedly with code -9; restarting it" in a.output()
    assert a.pid_of(worker_port) != worker_pid
    assert {port: a.pid_of(port) for port in others} == others, "other processes restarted"
    history = httpx.get(
        f"{a.gateway}/conversations/{conversation_id}/messages",
        headers={"Authorization": f"Bearer {account.token}"},
    ).json()
    replies = [m for m in history["items"] if m["role"] == "assistant"]
    assert [(m["content"], m["status"]) for m in replies] == [(expected, "complete")]

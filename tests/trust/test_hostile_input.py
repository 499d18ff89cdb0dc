"""Hostile HTTP input on every service: huge bodies, NUL and lone surrogates, validation errors
(issue 11, items 3, 4, 7). Each answer is a clear 4xx, costs little memory, logs one line."""

from __future__ import annotations

import json
import select
import socket
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from shared.input_guards import UNSTORABLE_TEXT
from tests.processes import ServiceProcess
from tests.trust.conftest import Stack, admin, client_ip, new_member

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024
UPLOAD_BYTES = 100 * MIB


def rss_bytes(process: ServiceProcess) -> int:
    assert process.proc is not None
    for line in Path(f"/proc/{process.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@dataclass
class Upload:
    status: int | None
    sent_bytes: int
    peak_rss_growth: int


def chunked_upload(process: ServiceProcess, path: str, total: int = UPLOAD_BYTES) -> Upload:
    """POST `total` bytes with chunked transfer encoding (no Content-Length), 1 MiB a chunk,
    sampling the server's memory; stops sending as soon as the server answers."""
    baseline = rss_bytes(process)
    peak = baseline
    chunk = b"[" + b"1," * (MIB // 2 - 1) + b"1"
    sent = 0
    status = None
    with socket.create_connection(("127.0.0.1", process.port), timeout=30) as conn:
        conn.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"X-Forwarded-For: {client_ip()}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        try:
            while sent < total:
                readable, _, _ = select.select([conn], [], [], 0)
                if readable:
                    break
                conn.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sent += len(chunk)
                peak = max(peak, rss_bytes(process))
            else:
                conn.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server closed the connection after answering
        conn.settimeout(60)
        response = b""
        try:
            while b"\r\n" not in response:
                data = conn.recv(4096)
                if not data:
                    break
                response += data
        except OSError:
            pass
        if response.startswith(b"HTTP/1.1 "):
            status = int(response.split()[1])
    peak = max(peak, rss_bytes(process))
    return Upload(status, sent, peak - baseline)


@pytest.mark.parametrize(
    ("service", "path"),
    [
        ("auth", "/auth/register"),
        ("gateway", "/conversations/"),
        ("analytics", "/api/v1/analytics/track/activity"),
    ],
)
def test_a_huge_chunked_body_is_refused_while_it_streams(
    stack: Stack, service: str, path: str
) -> None:
    process: ServiceProcess = getattr(stack, service)
    upload = chunked_upload(process, path)
    print(
        f"{service} {path}: status={upload.status} sent={upload.sent_bytes / MIB:.0f} MiB "
        f"rss_growth={upload.peak_rss_growth / MIB:.1f} MiB"
    )
    assert upload.status == 413
    assert upload.sent_bytes < UPLOAD_BYTES, "the server read the whole body"
    assert upload.peak_rss_growth < 20 * MIB
    assert process.proc is not None and process.proc.poll() is None


@pytest.mark.parametrize("service", ["auth", "gateway", "analytics"])
def test_a_declared_oversized_body_is_refused_before_it_is_sent(stack: Stack, service: str) -> None:
    """Only the headers go out: the 413 must come without the server waiting for the body."""
    process: ServiceProcess = getattr(stack, service)
    with socket.create_connection(("127.0.0.1", process.port), timeout=10) as conn:
        conn.sendall(
            b"POST /conversations/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 104857600\r\n\r\n"
        )
        head = conn.recv(4096)
    assert head.startswith(b"HTTP/1.1 413 "), head[:200]


async def test_validation_errors_never_echo_the_input(stack: Stack) -> None:
    secret = "Hunter-2-my-real-password"
    async with httpx.AsyncClient(base_url=stack.auth.url, timeout=10) as client:
        response = await client.post(
            "/auth/register",
            json={"username": "x", "email": "not-an-email", "password": secret},
            headers={"X-Forwarded-For": client_ip()},
        )
    assert response.status_code == 422
    assert secret not in response.text
    for entry in response.json()["detail"]:
        assert set(entry) == {"type", "loc", "msg"}, entry


async def test_every_422_has_the_documented_shape(stack: Stack) -> None:
    """`{"detail": [{"loc", "msg", "type"}]}` as in each OpenAPI document, also for rules
    checked past the schema (a weak password, a date range, a message over the limit)."""
    member = await new_member(stack)
    boss = await admin(stack)
    async with httpx.AsyncClient(timeout=10) as client:
        answers = [
            await client.post(
                f"{stack.auth.url}/auth/register",
                json={
                    "username": "shapetest",
                    "email": "shape@example.com",
                    "password": "password1",
                },
                headers={"X-Forwarded-For": client_ip()},
            ),
            await client.get(
                f"{stack.analytics.url}/api/v1/analytics/conversations",
                params={"start": "2026-02-02", "end": "2026-01-01"},
                headers=boss.headers,
            ),
        ]
        conversation = await client.post(
            f"{stack.gateway.url}/conversations/", json={"title": "t"}, headers=member.headers
        )
        answers.append(
            await client.post(
                f"{stack.gateway.url}/conversations/{conversation.json()['id']}/messages",
                json={"content": "x" * 20_000},
                headers=member.headers,
            )
        )
    for response in answers:
        assert response.status_code == 422, response.text
        detail = response.json()["detail"]
        assert isinstance(detail, list) and detail, response.text
        assert {"loc", "msg", "type"} <= set(detail[0])


def hostile_text_requests(stack: Stack, headers: dict[str, str], boss: dict[str, str]):
    """(description, method, url, kwargs): one per text field a client controls."""
    nul, surrogate = "a\x00b", "a\ud800b"
    auth, gw, an = stack.auth.url, stack.gateway.url, stack.analytics.url
    for label, bad in (("nul", nul), ("surrogate", surrogate)):
        # A form cannot carry a lone surrogate (percent-decoding replaces it); NUL it can.
        yield label, "POST", f"{auth}/auth/token", {"data": {"username": nul, "password": "x"}}
        yield (
            label,
            "POST",
            f"{auth}/auth/register",
            {
                "content": json.dumps(
                    {"username": "okname1", "email": "ok1@example.com", "password": "Zz9" + bad}
                ),
                "headers": {"Content-Type": "application/json"},
            },
        )
        yield (
            label,
            "PATCH",
            f"{auth}/auth/me",
            {
                "content": json.dumps({"full_name": bad}),
                "headers": {"Content-Type": "application/json", **headers},
            },
        )
        yield label, "GET", f"{auth}/users/", {"params": {"q": nul}, "headers": boss}
        yield (
            label,
            "POST",
            f"{gw}/conversations/",
            {
                "content": json.dumps({"title": bad}),
                "headers": {"Content-Type": "application/json", **headers},
            },
        )
        yield (
            label,
            "POST",
            f"{gw}/conversations/",
            {
                "content": json.dumps({"title": "ok", "system_prompt": bad}),
                "headers": {"Content-Type": "application/json", **headers},
            },
        )
        yield label, "GET", f"{gw}/conversations/", {"params": {"q": nul}, "headers": headers}
        yield (
            label,
            "POST",
            f"{gw}/assistants/",
            {
                "content": json.dumps({"name": bad}),
                "headers": {"Content-Type": "application/json", **headers},
            },
        )
        yield (
            label,
            "POST",
            f"{an}/api/v1/analytics/track/activity",
            {
                "content": json.dumps({"activity_type": "manual", "username": bad}),
                "headers": {"Content-Type": "application/json", **boss},
            },
        )


async def test_nul_and_lone_surrogates_are_422_without_a_traceback(stack: Stack) -> None:
    member = await new_member(stack)
    boss = await admin(stack)
    logs_before = {p.service: len(p.logs()) for p in stack.http_services}
    async with httpx.AsyncClient(timeout=10, headers={"X-Forwarded-For": client_ip()}) as client:
        for label, method, url, kwargs in hostile_text_requests(
            stack, member.headers, boss.headers
        ):
            response = await client.request(method, url, **kwargs)
            assert response.status_code in (401, 422), (label, method, url, response.text)
            if response.status_code == 422:
                assert "\x00" not in response.text
    # Each process logs a failure before it answers, and flushes every record.
    for process in stack.http_services:
        new_lines = process.logs()[logs_before[process.service] :]
        assert "Traceback" not in new_lines, new_lines[-3000:]
        assert " 500 " not in new_lines
        assert "a\\x00b" not in new_lines and "\\ud800" not in new_lines


async def test_a_nul_username_at_login_is_422(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.auth.url, timeout=10) as client:
        response = await client.post(
            "/auth/token",
            content=b"username=a%00&password=whatever",
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "X-Forwarded-For": client_ip(),
            },
        )
    assert response.status_code == 422
    assert response.json()["detail"][0]["msg"] == UNSTORABLE_TEXT

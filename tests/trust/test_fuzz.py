"""Property-based fuzzing of every OpenAPI operation of auth, gateway and analytics with a valid
token of each role (schemathesis): no input may cost a server error (issue 11).

Bounded in time: each (service, role) run gets `FUZZ_SECONDS` (override with
CONVOAI_FUZZ_SECONDS for a longer local run). The same command works by hand against any stack:
    schemathesis run http://127.0.0.1:8001/openapi.json --checks not_a_server_error \\
        -H "Authorization: Bearer $TOKEN" --max-time 60
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.trust.conftest import Stack, new_member

pytestmark = pytest.mark.e2e

FUZZ_SECONDS = int(os.environ.get("CONVOAI_FUZZ_SECONDS", "12"))
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
EXCLUDED_PATHS = (
    # They end the fuzzer's own session (every token issued before), which would leave the rest
    # of the run testing only the 401 path; tests/trust/test_revocation.py covers them.
    "/auth/logout-all",
    "/auth/logout",
)

CASES = [
    ("auth", "user"),
    ("auth", "manager"),
    ("auth", "admin"),
    ("gateway", "user"),
    ("analytics", "manager"),
    ("analytics", "admin"),
]


@pytest.mark.parametrize(("service", "role"), CASES)
async def test_no_input_costs_a_server_error(
    stack: Stack, service: str, role: str, tmp_path: Path
) -> None:
    # A fresh account per case, admins included: what the fuzzer does to its own account
    # (renaming it, say) must not lock later tests out of the stack's bootstrap admin.
    member = await new_member(stack, role)
    process = getattr(stack, service)
    command = [
        str(SCHEMATHESIS),
        "run",
        f"{process.url}/openapi.json",
        "--checks",
        "not_a_server_error",
        "--max-time",
        str(FUZZ_SECONDS),
        "--workers",
        "1",
        "--request-timeout",
        "20",
        "--header",
        f"Authorization: Bearer {member.access_token}",
        "--suppress-health-check",
        "all",
        "--no-color",
    ]
    for path in EXCLUDED_PATHS:
        command += ["--exclude-path", path]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=FUZZ_SECONDS * 4 + 60,
        check=False,
        cwd=tmp_path,  # schemathesis keeps a cache in the working directory
    )
    summary = "\n".join(result.stdout.splitlines()[-25:])
    print(f"{service} as {role}:\n{summary}")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "Server error" not in result.stdout

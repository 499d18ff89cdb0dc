"""Running extraction in a child process with a deadline and memory/CPU limits (see
`extraction.py` for why a child); the parent only waits, so its event loop stays free."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from dataclasses import asdict, dataclass
from typing import Any

from services.knowledge.chunking import TextChunk
from services.knowledge.extraction import ExtractionParameters

log = logging.getLogger(__name__)

MAX_OUTPUT_BYTES = 256 * 2**20


@dataclass(frozen=True)
class ExtractionLimits:
    timeout_s: float
    memory_bytes: int
    max_pages: int
    max_unpacked_bytes: int
    max_characters: int
    chunk_chars: int
    chunk_overlap_chars: int
    default_language: str


@dataclass(frozen=True)
class Extracted:
    chunks: list[TextChunk]
    characters: int
    pages: int | None
    language: str


class ExtractionFailed(Exception):
    """`reason` is a code (`encrypted`, `no_text`, `too_many_pages`, `parse_error`, `timeout`,
    `too_large`, ...), `message` what a person can do about it."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


async def extract_in_child(data: bytes, content_type: str, limits: ExtractionLimits) -> Extracted:
    params = ExtractionParameters(
        content_type=content_type,
        max_pages=limits.max_pages,
        max_unpacked_bytes=limits.max_unpacked_bytes,
        max_characters=limits.max_characters,
        chunk_chars=limits.chunk_chars,
        chunk_overlap_chars=limits.chunk_overlap_chars,
        default_language=limits.default_language,
        memory_bytes=limits.memory_bytes,
        cpu_seconds=max(1, int(limits.timeout_s) + 1),
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.knowledge.extraction",
        json.dumps(asdict(params)),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        limit=MAX_OUTPUT_BYTES,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(data), limits.timeout_s)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise ExtractionFailed(
            "timeout",
            f"Reading the file took longer than {limits.timeout_s:g} s; "
            "upload a smaller or simpler file.",
        ) from None
    except BaseException:
        # Cancelled (the worker is stopping): never leave the child running.
        if process.returncode is None:
            process.kill()
            await process.wait()
        raise
    return _result(process.returncode, stdout, stderr, limits)


def _result(
    returncode: int | None, stdout: bytes, stderr: bytes, limits: ExtractionLimits
) -> Extracted:
    if returncode == -signal.SIGXCPU or returncode == -signal.SIGKILL:
        raise ExtractionFailed(
            "timeout",
            f"Reading the file needed more than {limits.timeout_s:g} s of CPU; "
            "upload a smaller or simpler file.",
        )
    try:
        result: dict[str, Any] = json.loads(stdout) if stdout else {}
    except ValueError:
        result = {}
    if not result:
        # The child died without an answer: most often out of its address space.
        tail = stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        log.warning(
            "extraction child failed", extra={"returncode": returncode, "error": tail[0][:300]}
        )
        if "MemoryError" in stderr.decode(errors="replace"):
            raise ExtractionFailed(
                "too_large",
                f"Reading the file needed more than {limits.memory_bytes // 2**20} MiB of "
                "memory; upload a smaller or simpler file.",
            )
        raise ExtractionFailed("parse_error", "The file could not be read.")
    if not result.get("ok"):
        raise ExtractionFailed(str(result["reason"]), str(result["message"]))
    return Extracted(
        chunks=[TextChunk(**c) for c in result["chunks"]],
        characters=int(result["characters"]),
        pages=result.get("pages"),
        language=str(result["language"]),
    )

"""Structured logging: one event per line, key=value or JSON, with secrets redacted."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from shared.tracing import log_fields

_SECRET_PATTERNS = (
    # ?token=... / &access_token=... in URLs (uvicorn access log of the WebSocket route)
    (re.compile(r"((?:access_|refresh_)?token=)[^&\s\"']+", re.IGNORECASE), r"\1[REDACTED]"),
    (re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE), r"\1[REDACTED]"),
    (re.compile(r"(password[\"']?\s*[:=]\s*[\"']?)[^\s,\"'&}]+", re.IGNORECASE), r"\1[REDACTED]"),
    (re.compile(r"\$argon2id?\$[^\s\"']+"), "[REDACTED-HASH]"),
    # any JWT-shaped string, wherever it appears
    (re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), "[REDACTED-JWT]"),
    (re.compile(r"(amqps?://[^:/@\s]+:)[^@\s]+@"), r"\1***@"),
    (re.compile(r"(postgres(?:ql)?(?:\+asyncpg)?://[^:/@\s]+:)[^@\s]+@"), r"\1***@"),
)

_RESERVED = set(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


def redact(text: str) -> str:
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact_url(url: str) -> str:
    """`amqp://guest:secret@host/` → `amqp://guest:***@host/`, for messages that name a URL."""
    return redact(url)


class _StructuredFormatter(logging.Formatter):
    def __init__(self, service: str, fmt: str) -> None:
        super().__init__()
        self.service = service
        self.fmt = fmt

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                fields[key] = value
        fields.update(log_fields())
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        if self.fmt == "json":
            line = json.dumps(fields, default=str)
        else:
            line = " ".join(f"{k}={_kv(v)}" for k, v in fields.items())
        return redact(line)


def _kv(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n'):
        return json.dumps(text)
    return text


_EVERY_SOCKET_LINES = frozenset({"connection open", "connection closed"})
"""What the `websockets` protocol under uvicorn logs at INFO for every socket."""


class _DropAcceptedSocketLines(logging.Filter):
    """The INFO lines for every accepted WebSocket — uvicorn's `[accepted]` and the
    `websockets` protocol's "connection open" / "connection closed": at thousands of sockets a
    second they cost ~0.2 ms of the gateway's CPU per socket, a sixth of opening one (py-spy,
    then ~13 % of it again for the last two, profiled on CPU time), and say nothing the
    open-sockets gauge does not. Refused sockets (403) are still logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg
        return not (
            isinstance(message, str)
            and (message.endswith("[accepted]") or message in _EVERY_SOCKET_LINES)
        )


def configure_logging(service: str, level: str = "INFO", fmt: str = "kv") -> None:
    """Route every logger (ours, uvicorn's, FastStream's) through one redacting formatter."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_StructuredFormatter(service, fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "faststream", "aio_pika", "aiormq"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    uvicorn_errors = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DropAcceptedSocketLines) for f in uvicorn_errors.filters):
        uvicorn_errors.addFilter(_DropAcceptedSocketLines())
    # aiormq/aio_pika are chatty at INFO during reconnects; warnings are enough.
    logging.getLogger("aiormq").setLevel(logging.WARNING)
    logging.getLogger("aio_pika").setLevel(logging.WARNING)
    # The model client's HTTP stack logs every request at INFO: a line per reply is noise
    # (and measurable CPU under load); its failures reach our own logs as reply errors.
    for name in ("httpx", "httpx2", "httpcore", "httpcore2"):
        logging.getLogger(name).setLevel(logging.WARNING)

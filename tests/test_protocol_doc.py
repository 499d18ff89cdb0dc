"""docs/websocket-protocol.md lists everything the gateway can send a client, read from the code.

Two sources, so neither can hide a frame: the protocol's inventory (`services.gateway.protocol`:
`SERVER_FRAME_TYPES`, `ERROR_CODES`, `CLOSE_CODES`, `CLIENT_FRAMES`), and what the gateway's
sources actually build — an AST scan of every gateway module for frame dicts, error codes and
close codes, so a frame written anywhere without a constant is seen too. The reply frames' fields
are the `shared.stream` models the gateway forwards; model error codes are the chat worker's
`ModelFailure` codes. Each scan must find what is known to exist, so a refactor that hides
something from it fails here instead of passing on an empty set.
"""

from __future__ import annotations

import ast
import re
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel

from services.gateway import protocol
from shared.stream import ReplySnapshotFrame, StreamFrame

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "websocket-protocol.md"
MODELS_DOC = ROOT / "docs" / "models.md"
GATEWAY = ROOT / "services" / "gateway"
CHAT_WORKER = ROOT / "services" / "chat_worker"

# Answers a gateway's `resync` on the broker; the gateway folds it into its own `snapshot`.
NOT_FORWARDED = {ReplySnapshotFrame}


# The OpenAI-compatible HTTP API (docs/openai-api.md): its "type"/"code" literals are OpenAI's,
# never WebSocket frames.
NOT_WEBSOCKET = {"openai_api.py", "openai_schemas.py", "api_caller.py"}


def _modules(package: Path) -> Iterator[ast.Module]:
    for path in sorted(package.rglob("*.py")):
        if "migrations" not in path.parts and path.name not in NOT_WEBSOCKET:
            yield ast.parse(path.read_text(), str(path))


def _str(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _call_name(node: ast.Call) -> str | None:
    func = node.func
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else None


@dataclass
class GatewayScan:
    server_frames: dict[str, set[str]] = field(default_factory=dict)
    """Frame type → its literal keys, for every dict literal with a constant "type"."""
    error_fields: set[str] = field(default_factory=set)
    error_codes: set[str] = field(default_factory=set)
    close_codes: set[int] = field(default_factory=set)
    client_frames: dict[str, set[str]] = field(default_factory=dict)
    """Client frame type → its fields, for every model with a `type: Literal[...]` field."""


def scan_gateway() -> GatewayScan:
    scan = GatewayScan()
    for module in _modules(GATEWAY):
        constants = {
            target.id: node.value.value
            for node in module.body
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
            for target in node.targets
            if isinstance(target, ast.Name) and isinstance(node.value.value, int)
        }
        for name, value in constants.items():
            if name.startswith("CLOSE_"):
                scan.close_codes.add(value)
        for node in ast.walk(module):
            if isinstance(node, ast.Dict):
                _scan_dict(node, scan)
            elif isinstance(node, ast.Call):
                _scan_call(node, scan, constants)
            elif isinstance(node, ast.ClassDef):
                _scan_class(node, scan)
    return scan


def _scan_dict(node: ast.Dict, scan: GatewayScan) -> None:
    keys = [_str(k) for k in node.keys]
    if "type" not in keys:
        return
    frame_type = _str(node.values[keys.index("type")])
    if frame_type is None:
        return
    scan.server_frames.setdefault(frame_type, set()).update(k for k in keys if k and k != "type")
    if frame_type == "error" and "code" in keys:
        code = _str(node.values[keys.index("code")])
        if code is not None:
            scan.error_codes.add(code)


def _scan_call(node: ast.Call, scan: GatewayScan, constants: dict[str, int]) -> None:
    name = _call_name(node)
    first = node.args[0] if node.args else None
    if name in ("error", "BadFrame"):
        code = _str(first)
        if code is not None:
            scan.error_codes.add(code)
        if name == "error":
            scan.error_fields.update(k.arg for k in node.keywords if k.arg)
    for keyword in node.keywords:
        if keyword.arg == "code" and (code := _str(keyword.value)) is not None:
            scan.error_codes.add(code)
    if name in ("close", "_Closing"):
        candidates = [first] + [k.value for k in node.keywords if k.arg == "code"]
        for candidate in candidates:
            if isinstance(candidate, ast.Constant) and isinstance(candidate.value, int):
                scan.close_codes.add(candidate.value)
            elif isinstance(candidate, ast.Name) and candidate.id in constants:
                scan.close_codes.add(constants[candidate.id])


def _scan_class(node: ast.ClassDef, scan: GatewayScan) -> None:
    fields: dict[str, ast.AST] = {}
    for statement in node.body:
        if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            fields[statement.target.id] = statement.annotation
        elif (
            isinstance(statement, ast.Assign)
            and (code := _str(statement.value)) is not None
            and any(isinstance(t, ast.Name) and t.id == "code" for t in statement.targets)
        ):
            # `code = "not_found"` on an exception class: the code its error frame carries.
            scan.error_codes.add(code)
    annotation = fields.get("type")
    if (
        isinstance(annotation, ast.Subscript)
        and isinstance(annotation.value, ast.Name)
        and annotation.value.id == "Literal"
        and (frame_type := _str(annotation.slice)) is not None
    ):
        scan.client_frames[frame_type] = set(fields) - {"type"}


def forwarded_reply_frames() -> dict[str, type[BaseModel]]:
    """The `shared.stream` frames a gateway forwards to its sockets, by type."""
    (union, *_) = typing.get_args(StreamFrame)
    return {
        cls.model_fields["type"].default: cls
        for cls in typing.get_args(union)
        if cls not in NOT_FORWARDED
    }


def model_failure_codes() -> set[str]:
    return {
        code
        for module in _modules(CHAT_WORKER)
        for node in ast.walk(module)
        if isinstance(node, ast.Call) and _call_name(node) == "ModelFailure"
        for code in [_str(node.args[0]) if node.args else None]
        if code is not None
    }


# --- the document ---------------------------------------------------------------------------


def sections(text: str, level: int) -> dict[str, str]:
    """Heading text (without backticks) → the text up to the next heading of that level or
    higher."""
    pattern = re.compile(rf"^{'#' * level} (.+)$", re.MULTILINE)
    headings = list(pattern.finditer(text))
    result = {}
    for n, heading in enumerate(headings):
        end = headings[n + 1].start() if n + 1 < len(headings) else len(text)
        body = text[heading.end() : end]
        higher = re.search(rf"^#{{1,{level - 1}}} ", body, re.MULTILINE)
        result[heading.group(1).strip().strip("`")] = body[: higher.start()] if higher else body
    return result


def backticked(text: str) -> set[str]:
    return set(re.findall(r"`([^`\s]+)`", text))


def table_names(text: str) -> set[str]:
    return set(re.findall(r"^\| `([^`]+)` \|", text, re.MULTILINE))


def table_numbers(text: str) -> set[int]:
    return {int(n) for n in re.findall(r"^\| (\d{4}) \|", text, re.MULTILINE)}


DOC_TEXT = DOC.read_text()
PARTS = sections(DOC_TEXT, 2)
SERVER_FRAMES = sections(PARTS["Server frames"], 3)
CLIENT_FRAMES = sections(PARTS["Client frames"], 3)
SCAN = scan_gateway()


def test_the_scans_find_what_is_known_to_exist():
    """Guards every test below against a scan that silently finds nothing."""
    assert {"ready", "ack", "error", "snapshot", "pong", "conversation.started"} <= set(
        SCAN.server_frames
    )
    assert {"user_id", "limits"} <= SCAN.server_frames["ready"]
    assert {"retry_after"} <= SCAN.error_fields
    assert {"invalid_json", "unauthorized", "not_found", "rate_limited", "unavailable"} <= (
        SCAN.error_codes
    )
    assert {1008, 1013} <= SCAN.close_codes
    assert {"auth", "send_message", "subscribe", "ping"} <= set(SCAN.client_frames)
    assert {"conversation_id", "content", "client_message_id"} <= SCAN.client_frames["send_message"]
    assert {"reply.started", "reply.delta", "reply.completed", "reply.failed"} <= set(
        forwarded_reply_frames()
    )
    assert {"model_unreachable", "model_auth_failed", "model_not_found"} <= model_failure_codes()


def test_every_server_frame_of_the_inventory_is_documented():
    missing = protocol.SERVER_FRAME_TYPES - set(SERVER_FRAMES)
    assert not missing, f"server frames not documented: {sorted(missing)}"


def test_every_server_frame_the_gateway_builds_is_documented_with_its_fields():
    for frame_type, keys in SCAN.server_frames.items():
        assert frame_type in SERVER_FRAMES, f"server frame {frame_type!r} is not documented"
        missing = keys - backticked(SERVER_FRAMES[frame_type])
        assert not missing, f"fields of {frame_type!r} not documented: {sorted(missing)}"
    missing = SCAN.error_fields - backticked(SERVER_FRAMES["error"])
    assert not missing, f"error frame fields not documented: {sorted(missing)}"


def test_every_reply_frame_the_gateway_forwards_is_documented_with_its_fields():
    common = backticked(SERVER_FRAMES["Reply frames"])
    for frame_type, cls in forwarded_reply_frames().items():
        assert frame_type in SERVER_FRAMES, f"reply frame {frame_type!r} is not documented"
        missing = set(cls.model_fields) - {"type"} - common - backticked(SERVER_FRAMES[frame_type])
        assert not missing, f"fields of {frame_type!r} not documented: {sorted(missing)}"


def test_the_document_lists_no_server_frame_that_does_not_exist():
    sent = set(SCAN.server_frames) | set(forwarded_reply_frames()) | protocol.SERVER_FRAME_TYPES
    unknown = set(SERVER_FRAMES) - {"Reply frames"} - sent
    assert not unknown, f"documented server frames the gateway never sends: {sorted(unknown)}"


def test_every_client_frame_is_documented_with_its_fields():
    inventory = {
        typing.get_args(cls.model_fields["type"].annotation)[0]: set(cls.model_fields) - {"type"}
        for cls in protocol.CLIENT_FRAMES
    }
    assert inventory == SCAN.client_frames, "the inventory and the client frame models disagree"
    for frame_type, fields in SCAN.client_frames.items():
        assert frame_type in CLIENT_FRAMES, f"client frame {frame_type!r} is not documented"
        missing = fields - table_names(CLIENT_FRAMES[frame_type])
        assert not missing, f"fields of {frame_type!r} not documented: {sorted(missing)}"
    unknown = set(CLIENT_FRAMES) - set(SCAN.client_frames)
    assert not unknown, f"documented client frames that do not exist: {sorted(unknown)}"


def test_every_error_code_is_documented():
    documented = table_names(PARTS["Error codes"])
    codes = SCAN.error_codes | protocol.ERROR_CODES
    assert codes - documented == set(), "error codes missing from the document"
    assert documented - codes == set(), "documented error codes the gateway never sends"


def test_every_close_code_is_documented():
    missing = (SCAN.close_codes | protocol.CLOSE_CODES) - table_numbers(PARTS["Close codes"])
    assert missing == set(), f"close codes missing from the document: {sorted(missing)}"


def test_close_codes_named_by_settings_and_the_readme_are_ones_the_gateway_sends():
    """An operator reads the close code in a setting's description (.env.example) or the
    README; the socket cap's once said 4429 while sockets closed with 4029."""
    from services.gateway.settings import GatewaySettings

    texts = [f.description or "" for f in GatewaySettings.model_fields.values()]
    texts.append((ROOT / "README.md").read_text())
    named_code = re.compile(r"(?:close[sd]?(?: code)?(?: with)?|\()\s*(4\d{3})\b")
    named = {int(code) for text in texts for code in named_code.findall(text)}
    assert named >= {4001, 4029}, "the scan no longer finds the codes it looks for"
    assert named - protocol.CLOSE_CODES == set(), "close codes that do not exist"


def test_every_model_error_code_is_documented_here_and_in_the_model_guide():
    codes = model_failure_codes()
    for name, table in (
        ("websocket-protocol.md", table_names(PARTS["Model error codes"])),
        ("models.md", table_names(sections(MODELS_DOC.read_text(), 2)["When replies fail"])),
    ):
        assert codes - table == set(), f"model error codes missing from {name}"
        assert table - codes == set(), f"{name} lists model error codes that do not exist"

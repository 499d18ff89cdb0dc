"""Read deploy/ the way Docker Compose, Docker and nginx would, for tests that run without a daemon.

Only the parts of each format the deployment uses are modelled; anything outside that subset
(regex locations, nested interpolation, shell-form ENTRYPOINT) is rejected so a check never passes
by misreading a file.
"""

from __future__ import annotations

import fnmatch
import importlib
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic_settings import BaseSettings

from services.cli import build_parser
from services.registry import SERVICES
from shared.settings import ServiceSettings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / ".env.example"


# ---------------------------------------------------------------- compose interpolation


class MissingVariable(Exception):
    """`${NAME:?message}` with NAME unset: Compose refuses to start."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name


_REFERENCE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}$]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's `${VAR}`, `${VAR:-x}`, `${VAR-x}`, `${VAR:?err}`, `${VAR?err}` and `$$`."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["bare"]
        op, arg = match["op"], match["arg"] or ""
        current = env.get(name)
        missing = not current if op and op.startswith(":") else current is None
        if op and op.endswith("-"):
            return arg if missing else str(current)
        if op and op.endswith("?"):
            if missing:
                raise MissingVariable(name, arg)
            return str(current)
        return current or ""

    if "${" in value and re.search(r"\$\{[^}]*\$\{", value):
        raise AssertionError(
            f"nested interpolation is not portable across Compose versions: {value}"
        )
    return _REFERENCE.sub(substitute, value)


def referenced_variables(value: Any) -> set[str]:
    """Every variable a loaded compose document interpolates (comments are not interpolated)."""
    if isinstance(value, dict):
        return set().union(*(referenced_variables(item) for item in value.values()))
    if isinstance(value, list):
        return set().union(*(referenced_variables(item) for item in value))
    if not isinstance(value, str):
        return set()
    return {m["braced"] or m["bare"] for m in _REFERENCE.finditer(value) if not m["escaped"]}


def read_env_file(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """A Compose `.env` → (assigned variables, variables documented as `# NAME=value`)."""
    assigned: dict[str, str] = {}
    documented: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.strip()
        commented = re.fullmatch(r"#\s*([A-Z][A-Z0-9_]*)=(.*)", line)
        if commented:
            documented[commented[1]] = _unquote(commented[2].strip())
            continue
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep, f"{path.name}: not NAME=value: {raw!r}"
        assigned[name.strip()] = _unquote(value.strip())
    return assigned, documented


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


# ---------------------------------------------------------------- compose services


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


def environment_of(
    service: dict[str, Any], env: dict[str, str] | None = None
) -> dict[str, str | None]:
    """The service's `environment`; with `env`, names without a value resolved as Compose does."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        pairs: dict[str, str | None] = {}
        for item in raw:
            name, sep, text = str(item).partition("=")
            pairs[name] = text if sep else None
        raw = pairs
    result: dict[str, str | None] = {k: (None if v is None else str(v)) for k, v in raw.items()}
    if env is None:
        return result
    resolved: dict[str, str | None] = {}
    for name, value in result.items():
        if value is None:
            if name in env:  # a name without value passes the variable through only when set
                resolved[name] = env[name]
        else:
            resolved[name] = value
    return resolved


def is_convoai_image(service: dict[str, Any]) -> bool:
    build = service.get("build")
    return isinstance(build, dict) and build.get("dockerfile") == "deploy/Dockerfile"


def depends_on(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    deps = service.get("depends_on") or {}
    assert isinstance(deps, dict), "depends_on must use the long form so conditions are explicit"
    return deps


@dataclass(frozen=True)
class ConvoaiCommand:
    """What `convoai <command>` runs, and which settings class reads its environment."""

    argv: list[str]
    subcommand: str
    service: str | None
    settings_class: type[BaseSettings]
    default_port: int | None
    port_option: int | None


def parse_command(argv: list[str]) -> ConvoaiCommand:
    """Parse with the real CLI parser (argparse exits on anything it does not accept)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"`convoai {shlex.join(argv)}` is not a valid command") from exc
    if args.command == "serve":
        spec = SERVICES[args.service]
        module = importlib.import_module(f"{spec.package}.settings")
        cls = getattr(module, spec.settings_class)
        return ConvoaiCommand(argv, "serve", spec.name, cls, spec.default_port, args.port)
    if args.command == "migrate":
        return ConvoaiCommand(argv, "migrate", None, ServiceSettings, None, None)
    raise AssertionError(f"`convoai {args.command}` does not belong in a container")


def settings_env_names(cls: type[BaseSettings]) -> dict[str, str]:
    """Environment variable name → field name, as pydantic-settings reads them."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    names: dict[str, str] = {}
    for name, info in cls.model_fields.items():
        alias = info.validation_alias if isinstance(info.validation_alias, str) else info.alias
        names[(alias or f"{prefix}{name}").upper()] = name
    return names


# ---------------------------------------------------------------- Dockerfile


@dataclass
class Instruction:
    keyword: str
    args: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(path: Path) -> list[Stage]:
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, "Dockerfile ends inside a line continuation"
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            match = re.fullmatch(
                r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", args.strip(), re.I
            )
            assert match, f"unreadable FROM: {line}"
            stages.append(Stage(match[1], match[2]))
        else:
            assert stages or keyword == "ARG", f"{keyword} before the first FROM"
            if stages:
                stages[-1].instructions.append(Instruction(keyword, args.strip()))
    return stages


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last matching pattern wins and also covers everything below it."""
    excluded = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").strip("/")
        regex = fnmatch.translate(pattern.replace("**/", "\0")).replace("\0", "(?:.*/)?")
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


def read_dockerignore(path: Path) -> list[str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


# ---------------------------------------------------------------- nginx


@dataclass
class Directive:
    name: str
    args: list[str]
    block: list[Directive] | None = None

    def children(self, name: str) -> list[Directive]:
        return [d for d in self.block or [] if d.name == name]

    def values(self, name: str) -> list[list[str]]:
        return [d.args for d in self.children(name)]


def parse_nginx(text: str) -> list[Directive]:
    """nginx's configuration grammar: words, quoted strings, `;`, `{ }`, `#` comments."""
    tokens = re.findall(r"#[^\n]*|\"(?:\\.|[^\"])*\"|'(?:\\.|[^'])*'|[{};]|[^\s{};]+", text)
    stack: list[list[Directive]] = [[]]
    words: list[str] = []
    for token in tokens:
        if token.startswith("#"):
            continue
        if token == ";":
            assert words, "empty directive"
            stack[-1].append(Directive(words[0], words[1:]))
            words = []
        elif token == "{":
            assert words, "block without a name"
            directive = Directive(words[0], words[1:], [])
            stack[-1].append(directive)
            stack.append(directive.block)  # type: ignore[arg-type]
            words = []
        elif token == "}":
            assert not words and len(stack) > 1, "unbalanced }"
            stack.pop()
        else:
            words.append(_unquote(token))
    assert len(stack) == 1 and not words, "unbalanced braces or missing ;"
    return stack[0]


def match_location(server: Directive, uri: str) -> Directive:
    """nginx's choice for `uri` among exact (`=`) and prefix locations (regex ones are refused)."""
    exact, prefix = [], []
    for location in server.children("location"):
        if location.args[0] == "=":
            exact.append(location)
        else:
            assert len(location.args) == 1 or location.args[0] == "^~", (
                f"regex location not modelled: {location.args}"
            )
            prefix.append(location)
    for location in exact:
        if location.args[1] == uri:
            return location
    candidates = [loc for loc in prefix if uri.startswith(loc.args[-1])]
    assert candidates, f"no location matches {uri}"
    return max(candidates, key=lambda loc: len(loc.args[-1]))

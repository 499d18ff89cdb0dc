"""What a fresh install needs is declared: every third-party module the `convoai` packages
import is a runtime dependency in pyproject.toml (not only a test extra), and every benchmark's
--help shows its defaults."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIRST_PARTY = {"services", "shared"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared(extra: str | None = None) -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specs = project["optional-dependencies"][extra] if extra else project["dependencies"]
    return {_normalise(re.split(r"[\s<>=!~;\[]", spec, maxsplit=1)[0]) for spec in specs}


def _imported_modules(root: Path) -> dict[str, str]:
    """Top-level module → a file importing it, for every absolute import under `root`."""
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], str(path.relative_to(REPO)))
    return found


def test_every_runtime_import_is_a_declared_runtime_dependency():
    distributions = packages_distributions()
    runtime = _declared()
    missing = []
    for package in ("services", "shared"):
        for module, where in _imported_modules(REPO / package).items():
            if module in sys.stdlib_module_names or module in FIRST_PARTY:
                continue
            owners = {_normalise(d) for d in distributions.get(module, [])}
            if not owners & runtime:
                missing.append(f"{module} (imported by {where}; from {sorted(owners) or '?'})")
    assert missing == [], "imported at run time but not in [project] dependencies: " + ", ".join(
        missing
    )


BENCHMARK_SCRIPTS = sorted(
    p.name
    for p in (REPO / "bench").glob("*.py")
    # The scripts one runs; the rest are modules they share (bench/ws_client.py, ...).
    if 'if __name__ == "__main__":' in p.read_text()
)


def test_every_benchmark_script_is_found():
    assert {"chat_cost.py", "chat_load.py", "litellm_proxy.py"} <= set(BENCHMARK_SCRIPTS)


@pytest.mark.parametrize("script", BENCHMARK_SCRIPTS)
def test_benchmark_help_shows_every_default(script):
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    entries: dict[str, str] = {}
    current = None
    for line in out.split("options:", 1)[1].splitlines():
        match = re.match(r"^  (--[a-z0-9-]+)", line)
        if match:
            current = match.group(1)
            entries[current] = line
        elif current is not None:
            entries[current] += " " + line.strip()
    entries.pop("--help", None)
    assert entries, out
    for option, text in entries.items():
        assert "(default:" in text, f"{script} {option} shows no default:\n{out}"

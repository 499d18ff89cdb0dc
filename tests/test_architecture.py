"""The walls of ARCHITECTURE.md, checked: no process package imports another's.

A process package imports `shared/`, the domain packages (each owns one schema both sides use)
and itself; only the launcher knows every process. Read from the source, so a new import that
breaks the rule fails here before it is ever run.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROCESSES = {"auth", "gateway", "chat_worker", "analytics_consumer", "knowledge_worker", "mock_llm"}
DOMAINS = {"chat", "budgets", "knowledge"}
LAUNCHER = {"runner.py", "cli.py", "registry.py"}


def _imported_services(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "services" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_the_service_packages_are_the_ones_this_test_knows() -> None:
    packages = {p.name for p in (ROOT / "services").iterdir() if (p / "__init__.py").exists()}
    assert packages == PROCESSES | DOMAINS


def test_no_process_imports_another_process() -> None:
    crossings = []
    for package in sorted(PROCESSES | DOMAINS):
        for path in sorted((ROOT / "services" / package).rglob("*.py")):
            foreign = _imported_services(path) - DOMAINS - {package}
            if foreign:
                crossings.append(f"{path.relative_to(ROOT)} imports {sorted(foreign)}")
    assert crossings == []


def test_domain_packages_import_no_process() -> None:
    for package in DOMAINS:
        for path in (ROOT / "services" / package).rglob("*.py"):
            assert not _imported_services(path) & PROCESSES, path


def test_only_the_launcher_sits_beside_the_packages() -> None:
    modules = {p.name for p in (ROOT / "services").glob("*.py")} - {"__init__.py"}
    assert modules == LAUNCHER


def test_no_test_module_imports_another() -> None:
    """Shared test helpers live in a conftest.py or a helper module, never in a test_*.py."""
    offenders = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            if module and module.split(".")[-1].startswith("test_"):
                offenders.append(f"{path.relative_to(ROOT)} imports {module}")
    assert offenders == []

"""The image installs the project as a regular wheel, not editable: every source file must be in it.

A file the editable install serves from the work tree (a migration, a static asset of the web UI)
but the wheel leaves out works in every local test and is missing only in the container.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from setuptools import find_namespace_packages, find_packages

from tests.deploy.compose_model import DEPLOY, REPO, parse_dockerfile


def wheel_files() -> set[Path]:
    """What setuptools' build_py puts in the wheel under this pyproject.toml's configuration."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    find = config["packages"]["find"]
    # In pyproject.toml, `find` includes namespace packages (directories without __init__.py).
    finder = find_namespace_packages if find.get("namespaces", True) else find_packages
    packages = finder(where=str(REPO), include=find["include"], exclude=find.get("exclude", ()))
    package_data: dict[str, list[str]] = config.get("package-data", {})
    files: set[Path] = set()
    for package in packages:
        directory = REPO / package.replace(".", "/")
        files |= set(directory.glob("*.py"))
        for key in ("*", "", package):
            for pattern in package_data.get(key, []):
                files |= {path for path in directory.glob(pattern) if path.is_file()}
    return files


def source_files() -> set[Path]:
    copied = {
        instruction.args.split()[0]
        for stage in parse_dockerfile(DEPLOY / "Dockerfile")
        for instruction in stage.all("COPY")
        if not instruction.args.startswith("--from=")
        and (REPO / instruction.args.split()[0]).is_dir()
    }
    assert copied == {"shared", "services"}, copied
    return {
        path
        for top in copied
        for path in (REPO / top).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def test_every_source_file_is_installed_in_the_image() -> None:
    missing = sorted(str(path.relative_to(REPO)) for path in source_files() - wheel_files())
    assert not missing, f"not installed by `pip install .`; add to package-data: {missing}"


def test_migrations_are_installed_for_every_migrated_schema() -> None:
    from services.registry import MIGRATED_SCHEMAS

    installed = wheel_files()
    for package in MIGRATED_SCHEMAS.values():
        migrations = REPO / package.replace(".", "/") / "migrations"
        assert migrations / "env.py" in installed
        assert any(path.parent == migrations / "versions" for path in installed)

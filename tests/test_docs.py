"""Docs that match the code: `.env.example` documents every setting of every process, and the
README's links into the repository lead somewhere."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

from pydantic_settings import BaseSettings

from services.registry import SERVICES

ROOT = Path(__file__).resolve().parents[1]


def _env_names(spec) -> set[str]:
    module = importlib.import_module(f"{spec.package}.settings")
    cls: type[BaseSettings] = getattr(module, spec.settings_class)
    prefix = cls.model_config.get("env_prefix", "")
    return {f"{prefix}{name}".upper() for name in cls.model_fields}


def test_env_example_documents_every_setting_and_nothing_else():
    text = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^#?\s*(CONVOAI_[A-Z0-9_]+)=", text, flags=re.MULTILINE))
    expected = set().union(*(_env_names(spec) for spec in SERVICES.values()))
    assert expected - documented == set(), "settings missing from .env.example"
    assert documented - expected == set(), ".env.example names settings that do not exist"


def test_env_example_shows_every_default_as_the_settings_define_it():
    generated = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "env_example.py")],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    assert (ROOT / ".env.example").read_text() == generated, (
        ".env.example is stale: python scripts/env_example.py > .env.example"
    )


def test_links_from_the_readme_and_docs_name_files_that_exist():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    links = 0
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            links += 1
            path = (page.parent / target.split("#")[0]).resolve()
            assert path.exists(), f"{page.relative_to(ROOT)} links to missing {target}"
    assert links >= 3, "the README no longer links its docs"

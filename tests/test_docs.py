"""Docs that match the code: `.env.example` documents every setting of every process."""

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

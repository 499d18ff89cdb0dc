"""The processes ConvoAI is made of: how to build each one's settings and app."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from pydantic_settings import BaseSettings


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    package: str
    settings_class: str
    default_port: int
    uses_infrastructure: bool
    """Whether it needs RabbitMQ and Postgres (mock_llm needs neither)."""
    access_log: bool = True
    """mock_llm is a test double under benchmark load: a line per request would cost CPU."""

    def load_settings(self, **overrides: Any) -> BaseSettings:
        module = importlib.import_module(f"{self.package}.settings")
        cls: type[BaseSettings] = getattr(module, self.settings_class)
        return cls(**{k: v for k, v in overrides.items() if v is not None})

    def create_app(self, settings: BaseSettings) -> FastAPI:
        module = importlib.import_module(f"{self.package}.app")
        app: FastAPI = module.create_app(settings)
        return app


SERVICES: dict[str, ServiceSpec] = {
    spec.name: spec
    for spec in (
        ServiceSpec("auth", "services.auth", "AuthSettings", 8001, True),
        ServiceSpec("gateway", "services.gateway", "GatewaySettings", 8000, True),
        ServiceSpec(
            "analytics_consumer", "services.analytics_consumer", "AnalyticsSettings", 8002, True
        ),
        ServiceSpec("chat_worker", "services.chat_worker", "ChatWorkerSettings", 8003, True),
        ServiceSpec(
            "knowledge_worker",
            "services.knowledge_worker",
            "KnowledgeWorkerSettings",
            8005,
            True,
        ),
        ServiceSpec(
            "mock_llm", "services.mock_llm", "MockLLMSettings", 8009, False, access_log=False
        ),
    )
}

MIGRATED_SCHEMAS: dict[str, str] = {
    "auth": "services.auth",
    "chat": "services.chat",
    "budgets": "services.budgets",
    "analytics": "services.analytics_consumer",
    # After `chat`: its files and reply sources refer to chat's assistants and messages.
    "knowledge": "services.knowledge",
}
"""Schema → the package whose `migrations/` owns it (in migration order)."""

"""Composition root of mock_llm, an OpenAI-compatible chat-completions server for offline runs."""

from __future__ import annotations

from fastapi import FastAPI

from services.mock_llm.api import MockLLM, router
from services.mock_llm.settings import MockLLMSettings
from shared.health import health_router
from shared.metrics import metrics_router

SERVICE = "mock_llm"


def create_app(settings: MockLLMSettings | None = None) -> FastAPI:
    settings = settings or MockLLMSettings()
    app = FastAPI(title="ConvoAI mock LLM", docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.mock = MockLLM(settings)
    app.include_router(health_router(SERVICE, settings.instance_id or SERVICE, {}))
    app.include_router(metrics_router())
    app.include_router(router)
    return app

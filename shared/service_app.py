"""The FastAPI app every service process serves: state, health, error mapping, HTTP metrics.

Each `app.py` stays its process's composition root (it builds the runtime and the service's own
objects and owns the lifespan); this is only the wiring they would otherwise each repeat.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from fastapi import APIRouter, FastAPI
from starlette.middleware import Middleware

from shared.health import ReadinessCheck, answer_503_while_database_unavailable, health_router
from shared.http_metrics import install_http_metrics
from shared.input_guards import install_input_guards
from shared.metrics import Refresh, metrics_router
from shared.runtime import ServiceRuntime

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def create_service_app(
    *,
    title: str,
    description: str = "",
    runtime: ServiceRuntime,
    lifespan: Lifespan,
    state: Mapping[str, Any] | None = None,
    readiness: Mapping[str, ReadinessCheck] | None = None,
    routers: Sequence[APIRouter] = (),
    middleware: Sequence[Middleware] = (),
    body_limit_exempt: Callable[[str], bool] | None = None,
    database_outage_is_503: bool = True,
    http_metrics: bool = True,
    metrics_refresh: Sequence[Refresh] = (),
    readiness_details: Callable[[], dict[str, Any]] | None = None,
) -> FastAPI:
    """An app with `runtime` and its settings in `app.state` (plus `state`), `/health` and
    `/ready` (broker and database, plus `readiness`), Prometheus `/metrics` (after running
    `metrics_refresh`), `routers`, the input guards (body limit, input-free 422s, unstorable
    text), then `middleware` inside the HTTP metrics middleware, so every request is measured,
    refused ones too."""
    app = FastAPI(title=title, description=description, lifespan=lifespan)
    app.state.runtime = runtime
    app.state.settings = runtime.settings
    for name, value in (state or {}).items():
        setattr(app.state, name, value)
    if database_outage_is_503:
        answer_503_while_database_unavailable(app)
    checks: dict[str, ReadinessCheck] = {
        "broker": runtime.check_broker,
        "database": runtime.check_database,
    }
    checks.update(readiness or {})
    app.include_router(
        health_router(runtime.service, runtime.instance_id, checks, readiness_details)
    )
    app.include_router(metrics_router(metrics_refresh))
    for router in routers:
        app.include_router(router)
    install_input_guards(app, runtime.settings.max_request_bytes, body_limit_exempt)
    for layer in middleware:
        app.add_middleware(layer.cls, *layer.args, **layer.kwargs)
    if http_metrics:
        install_http_metrics(app, runtime)
    return app

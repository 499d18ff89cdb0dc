"""Every metric the provisioned Grafana dashboard queries exists in the `/metrics` of the real
processes (a renamed metric would leave a panel silently empty)."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.compose_model import DEPLOY
from tests.observability.conftest import ObservedPlatform

pytestmark = pytest.mark.e2e

DASHBOARD = DEPLOY / "observability" / "grafana" / "dashboards" / "convoai.json"
METRIC = re.compile(r"\b(convoai_[a-z0-9_]+)\b")
SAMPLE_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "gauge": ("",),
}


def exposed_series_names(url: str) -> set[str]:
    """Sample names each family can have, from its `# TYPE` line (a labelled counter that has
    counted nothing yet has no sample, but it exists)."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        family.name + suffix
        for family in text_string_to_metric_families(text)
        for suffix in SAMPLE_SUFFIXES.get(family.type, ("",))
    }


def test_every_dashboard_query_names_a_metric_the_processes_expose(
    observed: ObservedPlatform,
) -> None:
    board = json.loads(DASHBOARD.read_text())
    expressions = [t["expr"] for panel in board["panels"] for t in panel["targets"]]
    queried = {name for expr in expressions for name in METRIC.findall(expr)}
    assert len(queried) >= 15
    exposed: set[str] = set()
    for process in observed.processes().values():
        exposed |= exposed_series_names(process.url)
    missing = sorted(queried - exposed)
    assert missing == [], f"queried by the dashboard, exposed by no process: {missing}"

"""deploy/ with `--profile observability`: Prometheus, Grafana, the OpenTelemetry collector and
Jaeger — what can be checked without a Docker daemon. (The dashboard's queries are checked
against live `/metrics` in tests/observability/test_dashboard.py.)"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from services.registry import SERVICES
from tests.deploy.compose_model import (
    COMPOSE_FILE,
    DEPLOY,
    ENV_EXAMPLE,
    load_compose,
    read_env_file,
)

OBSERVABILITY = DEPLOY / "observability"
COMPOSE = load_compose()
SERVICES_IN_COMPOSE: dict[str, dict[str, Any]] = COMPOSE["services"]
PROFILE = "observability"
COMPOSE_SCHEMA = Path(__file__).parent / "data" / "compose-spec.schema.json"
"""schema/compose-spec.json of github.com/compose-spec/compose-spec (Apache-2.0)."""


def yaml_file(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def mount_source(service: str, target: str) -> Path:
    """The host file bind-mounted at `target` in `service`."""
    for volume in SERVICES_IN_COMPOSE[service]["volumes"]:
        source, mounted, *_ = volume.split(":")
        if mounted == target:
            return (DEPLOY / source).resolve()
    raise AssertionError(f"{service}: nothing mounted at {target}")


def dashboard() -> dict[str, Any]:
    return json.loads((OBSERVABILITY / "grafana" / "dashboards" / "convoai.json").read_text())


def test_compose_file_is_valid_against_the_compose_specification() -> None:
    validator = jsonschema.Draft7Validator(json.loads(COMPOSE_SCHEMA.read_text()))
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert [e.message for e in validator.iter_errors(document)] == []
    broken = copy.deepcopy(document)
    broken["services"]["prometheus"]["profiles"] = "observability"
    broken["services"]["grafana"]["ports"] = {"3000": 3000}
    assert len(list(validator.iter_errors(broken))) >= 2


def test_the_profile_is_opt_in_and_nothing_else_needs_it() -> None:
    members = {n for n, s in SERVICES_IN_COMPOSE.items() if PROFILE in s.get("profiles", [])}
    assert members == {"prometheus", "grafana", "otel-collector", "jaeger"}
    for name, service in SERVICES_IN_COMPOSE.items():
        if name not in members:
            assert not set(service.get("depends_on", {})) & members, name


def test_prometheus_scrapes_every_process_at_its_port_and_finds_replicas_by_dns() -> None:
    config = yaml_file(mount_source("prometheus", "/etc/prometheus/prometheus.yml"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for name, spec in SERVICES.items():
        job = jobs[name]
        assert job.get("metrics_path", "/metrics") == "/metrics"
        # DNS service discovery: Docker answers with every replica's address.
        (sd,) = job["dns_sd_configs"]
        assert sd["names"] == [name] and sd["type"] == "A" and sd["port"] == spec.default_port
        assert name in SERVICES_IN_COMPOSE
        assert [str(p) for p in SERVICES_IN_COMPOSE[name]["expose"]] == [str(spec.default_port)]
    rabbitmq = jobs["rabbitmq"]
    assert rabbitmq["static_configs"] == [{"targets": ["rabbitmq:15692"]}]
    plugins = mount_source("rabbitmq", "/etc/rabbitmq/enabled_plugins").read_text()
    assert re.fullmatch(r"\[([a-z_]+,)*[a-z_]+\]\.\s*", plugins)
    assert "rabbitmq_prometheus" in plugins and "rabbitmq_management" in plugins


def test_traces_flow_from_the_services_through_the_collector_to_jaeger() -> None:
    _assigned, documented = read_env_file(ENV_EXAMPLE)
    endpoint = documented["OTEL_EXPORTER_OTLP_ENDPOINT"]
    host, port = re.fullmatch(r"http://([a-z_-]+):(\d+)", endpoint).groups()  # type: ignore[union-attr]
    assert host in SERVICES_IN_COMPOSE and port in SERVICES_IN_COMPOSE[host]["expose"]
    config = yaml_file(mount_source("otel-collector", "/etc/otelcol/config.yaml"))
    assert config["receivers"]["otlp"]["protocols"]["http"]["endpoint"] == f"0.0.0.0:{port}"
    pipeline = config["service"]["pipelines"]["traces"]
    assert pipeline["receivers"] == ["otlp"]
    for processor in pipeline["processors"]:
        assert processor in config["processors"]
    (exporter,) = pipeline["exporters"]
    target_host, target_port = config["exporters"][exporter]["endpoint"].split(":")
    assert target_host == "jaeger" and target_port in SERVICES_IN_COMPOSE["jaeger"]["expose"]
    assert SERVICES_IN_COMPOSE["jaeger"]["environment"]["COLLECTOR_OTLP_ENABLED"] == "true"
    for service in ("gateway", "auth", "analytics_consumer", "chat_worker"):
        assert "OTEL_EXPORTER_OTLP_ENDPOINT" in SERVICES_IN_COMPOSE[service]["environment"]


def test_grafana_provisions_the_datasources_and_the_convoai_dashboard() -> None:
    provisioning = mount_source("grafana", "/etc/grafana/provisioning")
    datasources = yaml_file(provisioning / "datasources" / "datasources.yaml")["datasources"]
    uids = {d["uid"]: d for d in datasources}
    assert uids["prometheus"]["url"] == "http://prometheus:9090"
    assert uids["jaeger"]["url"] == "http://jaeger:16686"
    (provider,) = yaml_file(provisioning / "dashboards" / "dashboards.yaml")["providers"]
    dashboards_dir = mount_source("grafana", provider["options"]["path"])
    assert (dashboards_dir / "convoai.json").is_file()
    home = SERVICES_IN_COMPOSE["grafana"]["environment"][
        "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"
    ]
    assert home == f"{provider['options']['path']}/convoai.json"
    board = dashboard()
    assert board["uid"] == "convoai"
    for panel in board["panels"]:
        assert panel["datasource"]["uid"] in uids
        for target in panel["targets"]:
            assert target["datasource"]["uid"] in uids and target["expr"]


TTFT_RATE = "sum by (le) (rate(convoai_chat_time_to_first_token_seconds_bucket"


def test_the_dashboard_shows_what_an_operator_asks_first() -> None:
    expressions = " ".join(t["expr"] for p in dashboard()["panels"] for t in p["targets"])
    for needed in (
        'convoai_chat_turns_total{outcome="completed"}',  # turns/s
        f"histogram_quantile(0.5, {TTFT_RATE}",
        f"histogram_quantile(0.95, {TTFT_RATE}",
        "convoai_chat_model_errors_total",
        "convoai_chat_requests_queue_depth",
        "convoai_outbox_oldest_age_seconds",
        "convoai_analytics_lag_seconds",
    ):
        assert needed in expressions, needed

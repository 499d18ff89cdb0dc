"""deploy/k8s, validated offline: it renders, every object passes its schema (Kubernetes core
objects with `kubernetes-validate`, the operators' resources with their CRDs' schemas from
tests/deploy/crd_schemas), every CONVOAI_* variable it sets is a real setting, and what our
guarantees need from the broker, the database and the autoscaler is there."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from services.registry import SERVICES
from shared.runtime import DRAIN_TIMEOUT_S
from shared.settings import ServiceSettings
from shared.topology import Topology

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
SCHEMAS = Path(__file__).parent / "crd_schemas"
KUBERNETES_VERSION = "1.30.0"
UVICORN_GRACEFUL_S = 15
"""services/cli.py `timeout_graceful_shutdown`: before the lifespan's own drain begins."""

SETTINGS_BY_SERVICE: dict[str, type[ServiceSettings]] = {
    spec.name: getattr(importlib.import_module(f"{spec.package}.settings"), spec.settings_class)
    for spec in SERVICES.values()
    # The offline model server is for tests and laptops, not a cluster.
    if spec.name != "mock_llm"
}


def assemble() -> list[dict[str, Any]]:
    """What `kubectl kustomize deploy/k8s` renders for this kustomization's features: its
    resources, the namespace and labels set on each, images renamed."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert set(kustomization) <= {
        "apiVersion",
        "kind",
        "namespace",
        "labels",
        "resources",
        "images",
    }, "a kustomize feature this assembler does not know: teach it, or use kubectl"
    labels: dict[str, str] = {}
    for entry in kustomization.get("labels", []):
        labels.update(entry["pairs"])
    images = {i["name"]: f"{i['newName']}:{i['newTag']}" for i in kustomization.get("images", [])}
    objects = []
    for resource in kustomization["resources"]:
        for obj in yaml.safe_load_all((K8S / resource).read_text()):
            if not obj:
                continue
            metadata = obj.setdefault("metadata", {})
            if obj["kind"] != "Namespace":
                metadata["namespace"] = kustomization["namespace"]
            metadata.setdefault("labels", {}).update(labels)
            for container in _containers(obj):
                container["image"] = images.get(container["image"], container["image"])
            objects.append(obj)
    return objects


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = _pod_spec(obj)
    return [] if spec is None else spec.get("containers", []) + spec.get("initContainers", [])


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    if obj["kind"] in {"Deployment", "Job", "StatefulSet", "DaemonSet"}:
        spec: dict[str, Any] = obj["spec"]["template"]["spec"]
        return spec
    return None


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return assemble()


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def test_kubectl_renders_the_same_objects(objects):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; the PyYAML assembly above stands in for it")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    by_kubectl = [o for o in yaml.safe_load_all(rendered) if o]

    def key(o: dict[str, Any]) -> tuple[str, str]:
        return o["kind"], o["metadata"]["name"]

    assert sorted(map(key, by_kubectl)) == sorted(map(key, objects))
    ours = {key(o): o for o in objects}
    for obj in by_kubectl:
        assert obj == ours[key(obj)], key(obj)


CORE_API = re.compile(r"^(v1|(apps|batch|policy|autoscaling|networking\.k8s\.io)/v\d+)$")


def test_core_objects_pass_the_kubernetes_schemas(objects):
    core = [o for o in objects if CORE_API.match(o["apiVersion"])]
    assert {o["kind"] for o in core} >= {
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "Job",
        "Secret",
        "ConfigMap",
        "HorizontalPodAutoscaler",
    }
    for obj in core:
        # strict: an unknown (misspelt) field is an error, as `kubectl apply` would warn.
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def _strict(schema: Any) -> Any:
    """The CRD schema with unknown fields refused, as the API server prunes (drops) them."""
    if isinstance(schema, dict):
        strict = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            strict["additionalProperties"] = False
        return strict
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    return schema


@pytest.mark.parametrize(
    ("api_version", "kind", "schema_file"),
    [
        ("rabbitmq.com/v1beta1", "RabbitmqCluster", "rabbitmq.com_rabbitmqcluster_v1beta1.json"),
        ("postgresql.cnpg.io/v1", "Cluster", "postgresql.cnpg.io_cluster_v1.json"),
        ("keda.sh/v1alpha1", "ScaledObject", "keda.sh_scaledobject_v1alpha1.json"),
        (
            "keda.sh/v1alpha1",
            "TriggerAuthentication",
            "keda.sh_triggerauthentication_v1alpha1.json",
        ),
    ],
)
def test_operator_resources_pass_their_crd_schemas(objects, api_version, kind, schema_file):
    schema = _strict(json.loads((SCHEMAS / schema_file).read_text()))
    found = [o for o in objects if o["apiVersion"] == api_version and o["kind"] == kind]
    assert found, f"no {kind} in deploy/k8s"
    for obj in found:
        # Metadata is the API server's to check; the CRD schema describes it as a bare object.
        body = {**obj, "metadata": {}}
        jsonschema.validate(body, schema, cls=jsonschema.Draft7Validator)


def test_a_misspelt_field_fails_validation(objects):
    """The strict schemas catch what the API server would silently drop."""
    cluster = next(o for o in objects if o["kind"] == "RabbitmqCluster")
    schema = _strict(
        json.loads((SCHEMAS / "rabbitmq.com_rabbitmqcluster_v1beta1.json").read_text())
    )
    broken = {**cluster, "metadata": {}, "spec": {**cluster["spec"], "replica": 3}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)
    deployment = next(iter(by_kind(objects, "Deployment").values()))
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(
            {**deployment, "spec": {**deployment["spec"], "replica": 2}},
            KUBERNETES_VERSION,
            strict=True,
        )


def _service_of(container: dict[str, Any]) -> str:
    args = container.get("args", [])
    return args[1] if args[:1] == ["serve"] else "migrate"


def test_every_convoai_variable_is_a_setting(objects):
    config = by_kind(objects, "ConfigMap")["convoai-config"]["data"]
    secrets = by_kind(objects, "Secret")["convoai-secrets"]["stringData"]
    checked = 0
    for obj in objects:
        for container in _containers(obj):
            settings = SETTINGS_BY_SERVICE.get(_service_of(container), ServiceSettings)
            fields = {f"CONVOAI_{name.upper()}" for name in settings.model_fields}
            names = {e["name"] for e in container.get("env", [])}
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] == "convoai-config"
                names |= set(config)
            for entry in container.get("env", []):
                ref = entry.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["name"] == "convoai-secrets":
                    assert ref["key"] in secrets, ref
            unknown = {n for n in names if n.startswith("CONVOAI_")} - fields
            assert not unknown, f"{obj['metadata']['name']}: not settings: {sorted(unknown)}"
            checked += 1
    assert checked >= 5


def test_the_settings_the_containers_get_are_valid(objects, monkeypatch):
    """The ConfigMap's values parse: a typo there would stop every pod at start-up."""
    for name, value in by_kind(objects, "ConfigMap")["convoai-config"]["data"].items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CONVOAI_JWT_SECRET", "x" * 48)
    settings = ServiceSettings()
    assert settings.environment == "production"


def test_probes_grace_and_disruption_budgets(objects):
    deployments = by_kind(objects, "Deployment")
    budgets = {
        b["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]: b
        for b in by_kind(objects, "PodDisruptionBudget").values()
    }
    services = {
        _service_of(d["spec"]["template"]["spec"]["containers"][0]) for d in deployments.values()
    }
    assert services == set(SETTINGS_BY_SERVICE)
    for name, deployment in deployments.items():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["livenessProbe"]["httpGet"]["path"] == "/health"
        assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
        assert name in budgets, f"{name} has no PodDisruptionBudget"
    worker = deployments["convoai-chat-worker"]["spec"]["template"]["spec"]
    # SIGKILL must not come before a draining worker's replies finish or go back to the queue.
    assert worker["terminationGracePeriodSeconds"] > UVICORN_GRACEFUL_S + DRAIN_TIMEOUT_S
    jobs = by_kind(objects, "Job")
    assert jobs["convoai-migrate"]["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "migrate"
    ]


def test_the_worker_scales_on_the_real_request_queue(objects):
    config = by_kind(objects, "ConfigMap")["convoai-config"]["data"]
    queue = Topology(config["CONVOAI_NAMESPACE"]).chat_requests.name
    scaled = by_kind(objects, "ScaledObject")["convoai-chat-worker"]
    assert scaled["spec"]["scaleTargetRef"]["name"] in by_kind(objects, "Deployment")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "rabbitmq"
    assert trigger["metadata"]["queueName"] == queue
    auth = by_kind(objects, "TriggerAuthentication")[trigger["authenticationRef"]["name"]]
    assert {t["parameter"] for t in auth["spec"]["secretTargetRef"]} == {"host"}
    hpa = by_kind(objects, "HorizontalPodAutoscaler")["convoai-gateway"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_broker_and_database_give_what_the_guarantees_need(objects):
    (rabbit,) = by_kind(objects, "RabbitmqCluster").values()
    # Quorum queues survive the loss of one node of three, not of one of two.
    assert rabbit["spec"]["replicas"] >= 3
    assert "pause_minority" in rabbit["spec"]["rabbitmq"]["additionalConfig"]
    (postgres,) = by_kind(objects, "Cluster").values()
    assert postgres["spec"]["instances"] >= 3
    # A committed (acknowledged) message must survive a failover of the primary.
    assert postgres["spec"]["postgresql"]["synchronous"]["number"] >= 1
    assert postgres["spec"]["postgresql"]["synchronous"]["dataDurability"] == "required"
    # The services dial what the operators create.
    for deployment in by_kind(objects, "Deployment").values():
        env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert f"@{rabbit['metadata']['name']}:5672/" in env["CONVOAI_AMQP_URL"]["value"]
        assert f"@{postgres['metadata']['name']}-rw:5432/" in env["CONVOAI_DATABASE_URL"]["value"]

"""deploy/k8s renders, validates against the Kubernetes schemas, and agrees with the service.

Rendering: ``kubectl kustomize`` (kustomize v5 built into kubectl), the same renderer as
``kubectl apply -k``. Schemas: ``kubernetes-validate --strict`` for the built-in kinds; the
Prometheus Operator CRDs (ServiceMonitor, PrometheusRule) against the CRD-generated models of
``cloudcoil-models-prometheus-operator`` (types, enums, patterns; unknown fields are caught by
comparing the parsed model with the input).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from deploy.capacity.bench import hpa_targets, load_bench
from service.app import create_app
from service.metrics import ServiceMetrics
from service.settings import Settings
from tests.unit.deploy.conftest import ROOT, render_overlay, validate_builtin_kinds, yaml

pytestmark = pytest.mark.unit

CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
ADAPTER = ROOT / "deploy/k8s/prometheus-adapter/values.yaml"


def by_kind(resources: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [r for r in resources if r["kind"] == kind]
    return found


def container(resources: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = by_kind(resources, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def env_settings(c: dict[str, Any]) -> dict[str, str]:
    return {e["name"].removeprefix("DELTAGATE_").lower(): e["value"] for e in c["env"] if "value" in e}


@pytest.fixture(scope="module")
def routes() -> set[str]:
    app = create_app(Settings(engine="dummy", bundle_path=Path("/nonexistent")))
    return set(app.openapi()["paths"])


# --- schema validation --------------------------------------------------------------------------
Rendered = tuple[str, list[dict[str, Any]]]


def test_builtin_kinds_pass_strict_schema_validation(rendered: Rendered, tmp_path: Path) -> None:
    overlay, resources = rendered
    builtin = [r for r in resources if r["kind"] not in CRD_KINDS]
    stdout = validate_builtin_kinds(builtin, tmp_path / f"{overlay}.yaml")
    assert stdout.count("passed") == len(builtin), stdout


def test_prometheus_operator_resources_match_their_crds(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    models = pytest.importorskip("cloudcoil.models.prometheus_operator.v1")
    _, resources = rendered
    crds = [r for r in resources if r["kind"] in CRD_KINDS]
    assert {r["kind"] for r in crds} == CRD_KINDS
    for resource in crds:
        parsed = getattr(models, resource["kind"]).model_validate(resource)
        round_trip = json.loads(parsed.model_dump_json(by_alias=True, exclude_unset=True))
        assert round_trip == resource, f"{resource['kind']}: fields unknown to the CRD"


def test_crd_check_rejects_a_wrong_field() -> None:
    """The CRD models do validate: a numeric scrape interval is refused."""
    models = pytest.importorskip("cloudcoil.models.prometheus_operator.v1")
    monitor = yaml.safe_load((ROOT / "deploy/k8s/base/servicemonitor.yaml").read_text())
    monitor["spec"]["endpoints"][0]["interval"] = 15
    with pytest.raises(ValueError):
        models.ServiceMonitor.model_validate(monitor)


# --- the pod ------------------------------------------------------------------------------------
def test_pod_runs_one_worker_with_valid_settings_and_guaranteed_cpu(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, resources = rendered
    c = container(resources)
    env = env_settings(c)
    assert not set(env) - set(Settings.model_fields), f"unknown settings {set(env) - set(Settings.model_fields)}"
    settings = Settings(**env)  # type: ignore[arg-type]
    assert settings.workers == 1
    assert settings.device == ("cuda" if overlay == "gpu" else "cpu")
    assert [p["containerPort"] for p in c["ports"]] == [settings.port]
    res = c["resources"]
    assert res["requests"] == res["limits"], "requests = limits: the CPU limit is the thread budget"
    assert ("nvidia.com/gpu" in res["limits"]) == (overlay == "gpu")
    assert c["args"] == ["deltagate", "serve"]
    tag = c["image"].rsplit(":", 1)[1]
    assert tag == {"cpu": "cpu", "gpu": "cuda"}[overlay]


def test_probes_use_readiness_and_liveness_routes(rendered: tuple[str, list[dict[str, Any]]], routes: set[str]) -> None:
    c = container(rendered[1])
    assert c["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"/readyz", "/healthz"} <= routes
    port_names = {p["name"] for p in c["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] in port_names


def test_termination_grace_covers_prestop_and_graceful_shutdown(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    resources = rendered[1]
    pod = by_kind(resources, "Deployment")["spec"]["template"]["spec"]
    c = container(resources)
    command = c["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    graceful = Settings(**env_settings(c)).graceful_shutdown_s  # type: ignore[arg-type]
    assert pod["terminationGracePeriodSeconds"] > float(command[1]) + graceful
    strategy = by_kind(resources, "Deployment")["spec"]["strategy"]
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0


def test_pod_is_locked_down(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    resources = rendered[1]
    pod = by_kind(resources, "Deployment")["spec"]["template"]["spec"]
    c = container(resources)
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]], "a writable /tmp for multipart spooling"
    namespace = by_kind(resources, "Namespace")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_user_matches_the_images(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    uid = by_kind(rendered[1], "Deployment")["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    for dockerfile in (ROOT / "docker").glob("Dockerfile.*"):
        users = re.findall(r"^USER (\d+)", dockerfile.read_text(), flags=re.MULTILINE)
        assert users and users[-1] == str(uid), dockerfile.name


# --- selectors and ports tie together -----------------------------------------------------------
def test_selectors_select_the_pods(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    resources = rendered[1]
    deployment = by_kind(resources, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selectors = {
        "Deployment": deployment["spec"]["selector"]["matchLabels"],
        "Service": by_kind(resources, "Service")["spec"]["selector"],
        "PodDisruptionBudget": by_kind(resources, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        "NetworkPolicy": by_kind(resources, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
    }
    for kind, selector in selectors.items():
        assert selector.items() <= pod_labels.items(), kind
    service = by_kind(resources, "Service")
    monitor = by_kind(resources, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= service_ports
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= {p["name"] for p in container(resources)["ports"]}
    netpol_ports = {p["port"] for rule in by_kind(resources, "NetworkPolicy")["spec"]["ingress"] for p in rule["ports"]}
    assert netpol_ports <= {p["name"] for p in container(resources)["ports"]}


def test_scrape_annotations_and_servicemonitor_hit_the_metrics_route(
    rendered: tuple[str, list[dict[str, Any]]], routes: set[str]
) -> None:
    resources = rendered[1]
    annotations = by_kind(resources, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] in routes and annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == container(resources)["ports"][0]["containerPort"]
    assert {e["path"] for e in by_kind(resources, "ServiceMonitor")["spec"]["endpoints"]} == {"/metrics"}


# --- autoscaling --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def adapter_metrics() -> dict[str, str]:
    """Custom metric name -> the series it is computed from (Prometheus Adapter rules)."""
    rules = yaml.safe_load(ADAPTER.read_text())["rules"]["custom"]
    return {r["name"]["as"]: re.match(r"(\w+)\{", r["seriesQuery"]).group(1) for r in rules}  # type: ignore[union-attr]


def test_hpa_scales_the_deployment_on_metrics_the_adapter_serves(
    rendered: tuple[str, list[dict[str, Any]]], adapter_metrics: dict[str, str]
) -> None:
    resources = rendered[1]
    hpa = by_kind(resources, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"]["name"] == by_kind(resources, "Deployment")["metadata"]["name"]
    assert "replicas" not in by_kind(resources, "Deployment")["spec"], "the HPA owns replicas"
    names = {m["pods"]["metric"]["name"] for m in hpa["metrics"]}
    assert names and names <= set(adapter_metrics)
    pdb = by_kind(resources, "PodDisruptionBudget")["spec"]
    assert pdb["maxUnavailable"] < hpa["minReplicas"] or hpa["minReplicas"] == 1


def test_adapter_series_are_exported_by_the_service(adapter_metrics: dict[str, str]) -> None:
    metrics = ServiceMetrics(max_batch_size=8)
    metrics.observe_request("/classify", "POST", 200, 0.01)
    exported = {s.name for family in metrics.registry.collect() for s in family.samples}
    assert set(adapter_metrics.values()) <= exported


def test_cpu_hpa_targets_are_derived_from_the_bench_run(adapter_metrics: dict[str, str]) -> None:
    resources = render_overlay("cpu")
    hpa = by_kind(resources, "HorizontalPodAutoscaler")["spec"]
    targets = {m["pods"]["metric"]["name"]: m["pods"]["target"]["averageValue"] for m in hpa["metrics"]}
    derived = hpa_targets(load_bench())
    assert set(targets) == set(derived)
    for name, value in targets.items():
        text = str(value)
        quantity = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
        assert quantity == pytest.approx(derived[name]), name
    # the queue target is one full batch of the pods the HPA scales
    batch = Settings(**env_settings(container(resources))).max_batch_size  # type: ignore[arg-type]
    assert derived["deltagate_queue_depth_images"] == batch == load_bench()["settings"]["max_batch_size"]


def test_prometheusrule_holds_the_compose_alert_rules(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    rule = by_kind(rendered[1], "PrometheusRule")
    compose_rules = yaml.safe_load((ROOT / "docker/prometheus/alerts.yml").read_text())
    assert rule["spec"]["groups"] == compose_rules["groups"]
    monitor = by_kind(rendered[1], "ServiceMonitor")
    # `up{job="deltagate"}` in the rules: the Operator names the job after the Service
    assert by_kind(rendered[1], "Service")["metadata"]["name"] == "deltagate" and monitor

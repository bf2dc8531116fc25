"""deploy/k8s/kserve: the InferenceService validates against KServe's API schema and agrees with the service.

The schema is the one KServe publishes for its CRDs, as the kserve SDK on PyPI ships it (``kserve.models``:
generated from KServe's OpenAPI spec, ``V1beta1InferenceService`` and every type under it; the pod-level types
are the ``kubernetes`` client's, generated from Kubernetes' OpenAPI spec, pydantic models that forbid unknown
fields). A field KServe does not have, or a value of the wrong type, fails here as ``kubectl apply`` would fail
against the CRD; a test below checks that the validator does fail on such mistakes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from service.settings import Settings
from tests.unit.deploy.conftest import (
    ROOT,
    render_kustomization,
    render_overlay,
    validate_builtin_kinds,
    yaml,
)

pytestmark = pytest.mark.unit

KSERVE_DIR = ROOT / "deploy/k8s/kserve"
kserve_models = pytest.importorskip("kserve.models", reason="the kserve SDK is in the dev extra")
kubernetes_client = pytest.importorskip("kubernetes.client", reason="the kserve SDK brings the kubernetes client")

_LIST, _DICT = re.compile(r"^[Ll]ist\[(.+)\]$"), re.compile(r"^[Dd]ict\((?:str|string), *(.+)\)$")
_SCALARS: dict[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "bool": (bool,), "float": (int, float),
                                         "object": (object,), "datetime": (str,)}


def schema_errors(kind: str, value: Any, where: str = "") -> list[str]:
    """What in ``value`` does not fit the KServe/Kubernetes type ``kind`` (e.g. ``V1beta1InferenceService``)."""
    if (m := _LIST.match(kind)) is not None:
        if not isinstance(value, list):
            return [f"{where}: a list expected, got {type(value).__name__}"]
        return [e for i, item in enumerate(value) for e in schema_errors(m.group(1), item, f"{where}[{i}]")]
    if (m := _DICT.match(kind)) is not None:
        if not isinstance(value, dict):
            return [f"{where}: an object expected"]
        return [e for k, item in value.items() for e in schema_errors(m.group(1), item, f"{where}.{k}")]
    if kind in _SCALARS:
        ok = isinstance(value, _SCALARS[kind]) and not (kind in ("int", "float") and isinstance(value, bool))
        return [] if ok else [f"{where}: {kind} expected, got {value!r}"]
    if hasattr(kserve_models, kind):  # a KServe type: walk its fields
        model = getattr(kserve_models, kind)
        if not isinstance(value, dict):
            return [f"{where}: {kind} (an object) expected"]
        fields = {json_name: attr for attr, json_name in model.attribute_map.items()}
        errors = [f"{where}.{key}: no such field in {kind}" for key in value if key not in fields]
        try:  # the generated setters refuse a missing required field (and values outside an enum)
            model(**{fields[key]: item for key, item in value.items() if key in fields})
        except ValueError as exc:
            errors.append(f"{where}: {exc}")
        return errors + [e for key, item in value.items() if key in fields
                         for e in schema_errors(model.openapi_types[fields[key]], item, f"{where}.{key}")]
    model = getattr(kubernetes_client, kind, None)  # a Kubernetes type: its own (strict) pydantic model
    if model is None:
        return [f"{where}: unknown type {kind}"]
    try:
        model.model_validate(value)
    except Exception as exc:  # pydantic's ValidationError, naming each bad field
        return [f"{where}: {exc}"]
    return []


@pytest.fixture(scope="module")
def resources() -> list[dict[str, Any]]:
    return render_kustomization(KSERVE_DIR)


@pytest.fixture(scope="module")
def isvc(resources: list[dict[str, Any]]) -> dict[str, Any]:
    (found,) = [r for r in resources if r["kind"] == "InferenceService"]
    return found


def test_the_inference_service_matches_kserves_schema(isvc: dict[str, Any]) -> None:
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert schema_errors("V1beta1InferenceService", isvc) == []
    assert isvc["spec"]["predictor"]["containers"][0]["name"] == "kserve-container"  # KServe's name for it


@pytest.mark.parametrize(("path", "value", "words"), [
    (("spec", "predictor", "minReplica"), 1, "no such field"),
    (("spec", "predictor", "scaleTarget"), "8", "int expected"),
    (("spec", "predictor", "containers", 0, "readinessProbe", "httpGet", "pathh"), "/x", "pathh"),
    (("spec", "predictor", "containers", 0, "resources", "limit"), {"cpu": "2"}, "limit"),
    (("spec", "predictor", "annotations"), {"a": 1}, "str expected"),
    (("spec",), {"transformer": {"minReplicas": 1}}, "predictor"),  # the predictor is required
])
def test_the_validator_refuses_what_kserve_would(isvc: dict[str, Any], path: tuple[Any, ...], value: Any,
                                                 words: str) -> None:
    import copy

    broken = copy.deepcopy(isvc)
    target = broken
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    errors = schema_errors("V1beta1InferenceService", broken)
    assert errors and any(words in e for e in errors), errors


def test_the_namespace_passes_strict_kubernetes_validation(resources: list[dict[str, Any]], tmp_path: Path) -> None:
    builtin = [r for r in resources if r["kind"] != "InferenceService"]
    assert [r["kind"] for r in builtin] == ["Namespace"]
    validate_builtin_kinds(builtin, tmp_path / "kserve.yaml")


def test_the_predictor_agrees_with_the_service(isvc: dict[str, Any]) -> None:
    from service.app import create_app

    predictor = isvc["spec"]["predictor"]
    (container,) = predictor["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    settings = Settings(**{k.removeprefix("DELTAGATE_").lower(): v for k, v in env.items()})  # type: ignore[arg-type]
    assert settings.host == "0.0.0.0" and settings.workers == 1
    assert [p["containerPort"] for p in container["ports"]] == [settings.port]
    routes = set(create_app(Settings(engine="dummy", bundle_path=Path("/nonexistent"))).openapi()["paths"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in routes and get["path"].startswith("/v2/health/") and get["port"] == settings.port
    assert container["resources"]["requests"] == container["resources"]["limits"]
    assert predictor["timeout"] > settings.request_timeout_s  # Knative's timeout never cuts the service's 504
    assert predictor["terminationGracePeriodSeconds"] > settings.graceful_shutdown_s
    assert predictor["minReplicas"] >= 1 and predictor["maxReplicas"] > predictor["minReplicas"]
    assert predictor["scaleMetric"] == "concurrency" and predictor["scaleTarget"] == settings.max_batch_size
    annotations = isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == "Serverless"
    assert annotations["prometheus.kserve.io/port"] == str(settings.port)


def test_the_predictor_runs_the_slim_cpu_image(isvc: dict[str, Any]) -> None:
    """The image compose builds from docker/Dockerfile.cpu and the CPU overlay runs (tests/container plays both)."""
    (container,) = isvc["spec"]["predictor"]["containers"]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))["services"]["deltagate"]
    assert compose["build"]["dockerfile"] == "docker/Dockerfile.cpu"
    (deployment,) = [r for r in render_overlay("cpu") if r["kind"] == "Deployment"]
    assert container["image"] == compose["image"] == deployment["spec"]["template"]["spec"]["containers"][0]["image"]

"""Alert rules: rendered from the default bundle, valid for promtool, and their tests can fail."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from deploy.alerts.render import DEPLOYED_ENGINE, OUTPUTS, bundle_values, render
from models.bundle import load_bundle
from service.engines.dummy import dummy_bundle
from service.metrics import ServiceMetrics
from tests.service_support import dummy_settings, serve
from tests.unit.deploy.conftest import ROOT, require_tool, yaml

pytestmark = pytest.mark.unit

BUNDLE = ROOT / "bundles/default"
ALERTS = ROOT / OUTPUTS["alerts"]
TESTS = ROOT / OUTPUTS["tests"]


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    if not (BUNDLE / "manifest.json").is_file():
        pytest.skip("bundles/default is not built")
    return render(BUNDLE)


def write(tree: Path, texts: dict[str, str]) -> Path:
    for key, text in texts.items():
        (tree / OUTPUTS[key]).parent.mkdir(parents=True, exist_ok=True)
        (tree / OUTPUTS[key]).write_text(text, encoding="utf-8")
    return tree / OUTPUTS["tests"]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool("promtool"), *args], capture_output=True, text=True, timeout=120, check=False)


def test_committed_rules_are_rendered_from_the_default_bundle(rendered: dict[str, str]) -> None:
    for key, text in rendered.items():
        committed = (ROOT / OUTPUTS[key]).read_text(encoding="utf-8")
        assert committed == text, f"{OUTPUTS[key]} is stale: run `python -m deploy.alerts.render`"


def selected_buckets(text: str) -> set[str]:
    """The gate histogram buckets the rules select, by ``le``."""
    return set(re.findall(r'deltagate_gate_score_bucket\{le="([^"]+)"\}', text))


@pytest.mark.parametrize("engine", ["auto", DEPLOYED_ENGINE])
async def test_the_served_gate_histogram_has_every_bucket_the_rules_select(engine: str) -> None:
    """`deltagate serve` (engine=auto: the int8 graph, its own threshold) and the deployments (onnx: float32)
    both expose the buckets the shipped rules select, so the drift rules never go silent for want of a series."""
    if not (BUNDLE / "manifest.json").is_file():
        pytest.skip("bundles/default is not built")
    settings = dummy_settings(engine=engine, bundle_path=BUNDLE, device="cpu", warmup=False)
    async with serve(settings) as (client, _):
        scrape = (await client.get("/metrics")).text
        served = (await client.get("/model")).json()
    assert engine != "auto" or served["engine"] == "onnx-int8", served["engine"]  # the case this test is about
    exposed = selected_buckets(scrape)
    wanted = selected_buckets(ALERTS.read_text(encoding="utf-8"))
    assert wanted and wanted <= exposed, (served["engine"], sorted(wanted - exposed), sorted(exposed))
    threshold = round(float(served["threshold"]), 6)
    assert any(abs(float(le) - threshold) < 1e-9 for le in exposed), (threshold, sorted(exposed))


# Every place that sets the engine of a service that loads the shipped rules (compose, the images, k8s).
DEPLOYMENT_FILES = [ROOT / "docker-compose.yml", *sorted(ROOT.glob("docker/Dockerfile.*")),
                    *sorted((ROOT / "deploy/k8s").rglob("*.yaml"))]
_ENGINE_SETTING = re.compile(r"DELTAGATE_ENGINE(?:\s*[:=]\s*|\s*\n\s*value:\s*)([\w-]+)")


def test_every_deployment_serves_the_graph_the_rules_were_rendered_for() -> None:
    """The committed rules hold the threshold, median and expected split of the graph each deployment's engine
    serves (the engine's own view of the bundle: onnx-int8 would gate with the int8 graph's threshold)."""
    if not (BUNDLE / "manifest.json").is_file():
        pytest.skip("bundles/default is not built")
    engines = {m for f in DEPLOYMENT_FILES for m in _ENGINE_SETTING.findall(f.read_text(encoding="utf-8"))}
    assert {DEPLOYED_ENGINE, "torch"} <= engines, engines  # the scan finds the CPU and the GPU services
    assert "auto" not in engines, "a deployment runs engine=auto: render for its device (--engine auto --device ...)"
    text, bundle = ALERTS.read_text(encoding="utf-8"), load_bundle(BUNDLE, verify=False)
    for engine in sorted(engines):
        values = bundle_values(bundle, engine, "cpu")  # the device decides nothing for an engine named explicitly
        assert f'le="{values["threshold_le"]}"' in text and f'le="{values["median_le"]}"' in text, engine
        assert f"- {values['expected_below_median']})" in text, engine


def test_promtool_accepts_the_rules_and_their_tests_pass() -> None:
    check = promtool("check", "rules", str(ALERTS))
    assert check.returncode == 0, check.stdout + check.stderr
    run = promtool("test", "rules", str(TESTS))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout + run.stderr


def test_promtool_tests_fail_when_a_bound_moves(tmp_path: Path) -> None:
    """With the OOD multiple raised to 5x, the 20 % case no longer fires: the tests notice."""
    if not (BUNDLE / "manifest.json").is_file():
        pytest.skip("bundles/default is not built")
    texts = render(BUNDLE, policy={"ood_multiple": 5})
    texts["tests"] = render(BUNDLE)["tests"].replace("More than 3x", "More than 5x")
    run = promtool("test", "rules", str(write(tmp_path, texts)))
    assert run.returncode != 0
    assert "DeltaGateOODShareHigh" in run.stdout + run.stderr


def alert_names() -> list[str]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [r["alert"] for g in groups for r in g["rules"] if "alert" in r]


def test_every_alert_has_a_firing_test_and_a_runbook() -> None:
    tests = yaml.safe_load(TESTS.read_text())["tests"]
    firing = {c["alertname"] for t in tests for c in t.get("alert_rule_test", []) if c.get("exp_alerts")}
    silent = {c["alertname"] for t in tests if t["name"] == "healthy" for c in t["alert_rule_test"]}
    doc = (ROOT / "docs/alerts.md").read_text(encoding="utf-8")
    for name in alert_names():
        assert name in firing, f"{name}: no promtool case where it fires"
        assert name in silent, f"{name}: not checked silent on healthy traffic"
        assert f"### {name}" in doc, f"{name}: no section in docs/alerts.md"
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    for rule in (r for g in groups for r in g["rules"] if "alert" in r):
        anchor = rule["alert"].lower()
        assert f"docs/alerts.md#{anchor}" in rule["annotations"]["description"]


def test_rules_query_only_series_the_service_exports() -> None:
    metrics = ServiceMetrics(max_batch_size=16)
    metrics.bind_model(dummy_bundle(4).manifest, {"engine": "dummy", "device": "cpu", "precision": "float32"})
    metrics.observe_request("/classify", "POST", 200, 0.01)
    exported = {s.name for family in metrics.registry.collect() for s in family.samples}
    text = ALERTS.read_text()
    used = set(re.findall(r"\bdeltagate_[a-z_]+\b", text))
    assert used and not used - exported, used - exported
    groups = yaml.safe_load(text)["groups"]
    recorded = {r["record"] for g in groups for r in g["rules"] if "record" in r}
    referenced = set(re.findall(r"\bdeltagate:[a-z0-9_:]+", text))
    assert referenced <= recorded, referenced - recorded


def test_compose_prometheus_loads_the_rules() -> None:
    prom = yaml.safe_load((ROOT / "docker/prometheus/prometheus.yml").read_text())
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = dict(v.split(":")[:2] for v in compose["services"]["prometheus"]["volumes"] if v.startswith("./"))
    assert mounts["./docker/prometheus/alerts.yml"] in prom["rule_files"]


def test_dashboard_shows_every_alert_signal() -> None:
    """Each alert's expression (or the recording rule it reads) is on a Grafana panel."""
    import json

    dash = json.loads((ROOT / "docker/grafana/dashboards/deltagate.json").read_text(encoding="utf-8"))
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    recorded = {r["record"] for g in groups for r in g["rules"] if "record" in r}
    assert set(re.findall(r"\bdeltagate:[a-z0-9_:]+", exprs)) <= recorded
    for rule in (r for g in groups for r in g["rules"] if "alert" in r):
        signals = re.findall(r"\bdeltagate:[a-z0-9_:]+|\bdeltagate_ready\b|\bup\{", rule["expr"])
        assert signals and signals[0] in exprs, f"{rule['alert']}: {signals[:1]} on no panel"

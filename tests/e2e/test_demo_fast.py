"""The demo pipeline end to end in its fast configuration: synth -> pretrain -> ablation -> train ->
export -> calibrate -> evaluate; the bundle loads, serves ONNX, and its recorded metrics are what a
fresh evaluation gives."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from deltagate.cli import app
from models.bundle import load_bundle
from models.train.data.splits import load_task_root
from models.train.evaluate import evaluate_bundles

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    result = CliRunner().invoke(app, ["demo", "build", "--preset", "fast", "--work", str(root / "work"),
                                      "--bundle", str(root / "bundle"), "--results", str(root / "results"),
                                      "--no-progress"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return root


def test_the_demo_writes_a_calibrated_evaluated_bundle_and_results(demo):
    bundle = load_bundle(demo / "bundle")
    m = bundle.manifest
    assert m.prompt["method"] == "ebm" and m.calibration is not None and m.onnx is not None
    assert m.evaluation is not None and m.evaluation["method"] == "ebm"
    names = {p.name for p in (demo / "results").iterdir()}
    assert {"evaluation.json", "evaluation.md", "ablation.json", "ablation.md", "train_speed.json", "demo.json",
            "hist_delta_energy.png", "roc.png", "per_class.png"} <= names
    doc = json.loads((demo / "results" / "evaluation.json").read_text())
    assert list(doc["methods"]) == ["zero-shot", "coop", "ebm"]
    assert doc["methods"]["ebm"] == m.evaluation


def test_recorded_metrics_equal_a_re_evaluation(demo):
    recorded = load_bundle(demo / "bundle").manifest.evaluation
    task = load_task_root(demo / "work" / "world")
    fresh = evaluate_bundles({"ebm": demo / "bundle"}, task, cache_dir=demo / "fresh-cache", write_manifest=False)
    assert fresh["ebm"].summary == recorded


def test_the_ablation_picked_the_training_config(demo):
    summary = json.loads((demo / "results" / "demo.json").read_text())
    ablation = json.loads((demo / "results" / "ablation.json").read_text())
    used = summary["train_config_used"]
    assert all(used[k] == v for k, v in ablation["selected"].items())

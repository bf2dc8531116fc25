"""The demo pipeline end to end in its fast configuration: synth -> pretrain -> ablation -> train ->
export -> calibrate -> evaluate; the bundle loads, serves ONNX, and its recorded metrics are what a
fresh evaluation gives."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from deltagate.cli import app
from models.bundle import load_bundle
from models.train.evaluate import evaluate_bundles
from proxy.world.splits import load_task_root

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
    assert {"evaluation.json", "evaluation.md", "ablation.json", "ablation.md", "selection.json", "train_speed.json",
            "demo.json", "hist_delta_energy.png", "roc.png", "per_class.png"} <= names
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


def test_the_shipped_bundle_carries_the_selected_score_parameters(demo):
    m = load_bundle(demo / "bundle").manifest
    selection = json.loads((demo / "results" / "selection.json").read_text())
    chosen = selection["ebm"]["score_params"]
    from dataclasses import asdict

    assert asdict(m.scores) == chosen  # what was selected on ID val is what is served
    assert m.calibration is not None and m.calibration.score == "delta_energy"
    assert m.prompt["score_selection"]["scores"]["delta_energy"]["hocv_auroc"] == pytest.approx(
        selection["ebm"]["scores"]["delta_energy"]["hocv_auroc"])


def test_the_evidence_pipeline_writes_verdicts_with_intervals(demo):
    out = demo / "evidence"
    result = CliRunner().invoke(app, ["demo", "evidence", "--preset", "fast", "--work", str(demo / "work"),
                                      "--results", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    doc = json.loads((out / "endpoints.json").read_text())
    assert [v["claim"] for v in doc["verdicts"]] == ["C1", "C2", "C3", "C4", "C5"]
    assert all(v["verdict"] in ("reproduced", "not reproduced", "inconclusive") for v in doc["verdicts"])
    for ep in doc["endpoints"]["primary"].values():
        lo, hi = ep["overall"]["ci95"]
        assert lo <= ep["overall"]["mean"] <= hi
    sel = json.loads((out / "selection.json").read_text())
    assert set(sel["default"]) == {"zero-shot", "coop", "ebm", "ebm-default"}
    # the demo's selection on the default split is the evidence's (same rule, same folds)
    demo_sel = json.loads((demo / "results" / "selection.json").read_text())
    assert sel["default"]["ebm"]["score_params"] == demo_sel["ebm"]["score_params"]
    assert "## Verdicts" in (out / "evidence.md").read_text()


def test_the_int8_graph_ships_exactly_when_auto_would_serve_it(demo):
    from models.bundle import INT8_ONNX_FILE
    from service.engines import choose_engine

    verdict = json.loads((demo / "results" / "demo.json").read_text())["int8"]
    bundle = load_bundle(demo / "bundle")
    assert verdict["method"] == "dynamic" and verdict["op_types"] == ["MatMul", "Gemm"] and verdict["detail"]
    shipped = INT8_ONNX_FILE in bundle.manifest.files
    assert shipped == verdict["kept"] == (verdict["code"] == "passed") == (bundle.manifest.int8 is not None)
    assert (demo / "bundle" / INT8_ONNX_FILE).is_file() == shipped
    assert choose_engine("auto", bundle, "cpu").engine == ("onnx-int8" if shipped else "onnx")

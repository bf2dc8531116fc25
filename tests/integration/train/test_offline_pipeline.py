"""The offline commands on a small task in the real-data layout (ImageFolder directories), micro CLIP."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from deltagate.cli import app
from models.bundle import load_bundle
from models.preprocess import preprocess_batch
from models.scoring_module import load_scoring_module
from models.train.calibrate import calibrate_bundle
from models.train.data.folders import scan_image_folder
from tests.conftest import ASSETS, MICRO_ARCH
from tests.offline_support import make_task_dirs

pytestmark = pytest.mark.integration

ARCH = ["--model", MICRO_ARCH, "--arch-config", str(ASSETS / f"{MICRO_ARCH}.json"), "--pretrained", "none"]
FAST = ["--epochs", "2", "--shots", "0", "--batch-size", "8", "--n-ctx", "4", "--threads", "1", "--device", "cpu"]


def _ok(result):
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_calibrate_writes_the_validation_quantile_into_the_bundle(tiny_bundle, tmp_path):
    bundle = shutil.copytree(tiny_bundle, tmp_path / "b")
    data = make_task_dirs(tmp_path / "data")
    index = scan_image_folder(data / "id" / "val")
    record = calibrate_bundle(bundle, index, target_tpr=0.9)
    # Independently: the module's own ΔEnergy output on the preprocessed images, 10% quantile.
    loaded = load_bundle(bundle)
    module = load_scoring_module(loaded)
    pixels = preprocess_batch([Image.open(p) for p in index.paths], loaded.manifest.preprocess)
    with torch.no_grad():
        de = module(torch.from_numpy(pixels))[2].numpy()
    assert loaded.manifest.calibration is not None
    assert loaded.manifest.calibration.threshold == pytest.approx(float(np.quantile(de, 0.1)), rel=1e-5, abs=1e-6)
    assert loaded.manifest.calibration.target_tpr == 0.9 and loaded.manifest.calibration.n == len(index)
    assert record.threshold == loaded.manifest.calibration.threshold


def test_train_calibrate_evaluate_from_the_command_line(tmp_path):
    data = make_task_dirs(tmp_path / "data")
    runner = CliRunner()
    for method in ("zero-shot", "coop", "ebm"):
        run, bundle = str(tmp_path / "runs" / method), str(tmp_path / "bundles" / method)
        _ok(runner.invoke(app, ["train", "--data", str(data), "--method", method, "--out", run, "--bundle", bundle,
                                "--delta-energy-top-c", "2", *ARCH, *FAST]))
        _ok(runner.invoke(app, ["calibrate", "--bundle", str(tmp_path / "bundles" / method), "--data", str(data)]))
    specs = [f"{m}={tmp_path / 'bundles' / m}" for m in ("zero-shot", "coop", "ebm")]
    out = tmp_path / "results"
    res = _ok(runner.invoke(app, ["evaluate", "--data", str(data), *sum((["--bundle", s] for s in specs), []),
                                  "--out", str(out)]))
    assert "delta_energy (c=2, T=1, r=0)" in res.output
    assert "Every score at its own threshold" in res.output
    doc = json.loads((out / "evaluation.json").read_text())
    assert list(doc["methods"]) == ["zero-shot", "coop", "ebm"]
    ebm = doc["methods"]["ebm"]
    assert set(ebm["scores"]["delta_energy"]["ood"]) == {"near", "noise"}
    assert set(ebm["covariate_accuracy"]) == {"sketch", "mean"}
    assert set(ebm["at_threshold"]["ood_reject_rate_by_group"]["near"]) == {"ring", "spiral"}
    assert {p.name for p in out.glob("*.png")} == {"hist_delta_energy.png", "roc.png", "per_class.png"}
    manifest = load_bundle(tmp_path / "bundles" / "ebm").manifest
    assert manifest.evaluation == ebm and manifest.scores.delta_energy_top_c == 2 and manifest.prompt["method"] == "ebm"
    assert manifest.onnx is not None  # the parity-checked ONNX file


def test_cache_benchmark_writes_its_measurements(tmp_path):
    data = make_task_dirs(tmp_path / "data")
    _ok(CliRunner().invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "bench"),
                                 "--benchmark-cache", "1", *ARCH, *FAST]))
    doc = json.loads((tmp_path / "bench" / "train_speed.json").read_text())
    assert doc["cached_epoch_s"] > 0 and doc["recompute_epoch_s"] > 0
    assert doc["speedup_per_epoch"] == pytest.approx(doc["recompute_epoch_s"] / doc["cached_epoch_s"])


def test_ablation_selects_on_validation_data_only(tmp_path):
    from dataclasses import replace

    from models.clip_loading import load_clip, register_architecture
    from models.train.data.folders import TaskPaths, load_task
    from models.train.selection import HOCVConfig, one_se_pick
    from models.train.trainer import LOSS_PARAMS, TrainConfig
    from proxy.ablation import AblationConfig, run_ablation

    full = load_task(TaskPaths.from_root(make_task_dirs(tmp_path / "data")))
    # No test, OOD or covariate data at all: the search can only have used ID train and val.
    task = replace(full, test=None, ood={}, covariate={})
    register_architecture(ASSETS / f"{MICRO_ARCH}.json")
    torch.manual_seed(0)
    clip = load_clip(MICRO_ARCH)
    base = TrainConfig(n_ctx=4, shots=0, epochs=1, batch_size=8, threads=1, device="cpu")
    grid = (("ebm_weight", (0.1, 1.0)), ("ce_on", ("edited", "original")))
    acfg = AblationConfig(grid=grid, hocv=HOCVConfig(folds=2, repeats=1, shots=0), acc_tolerance=1.0)
    res = run_ablation(clip, task, base, tmp_path / "abl", acfg, progress=False)
    assert [(r["ebm_weight"], r["ce_on"]) for r in res.rows] == [(0.1, "edited"), (0.1, "original"),
                                                                (1.0, "edited"), (1.0, "original")]
    assert set(res.selected) == set(LOSS_PARAMS) and "delta_energy_temperature" in res.selected_score
    assert sum(r["selected"] for r in res.rows) == 1
    # The pick is the 1-SE rule over every (loss, ΔEnergy) pair, recomputed here.
    assert res.selection is not None
    assert one_se_pick(res.selection.candidates).params == {**res.selected, **res.selected_score}
    assert set(res.folds) >= {"coop", "ebm", "ebm-default"} and len(res.folds["ebm"]) == 2
    doc = json.loads((tmp_path / "abl" / "ablation.json").read_text())
    assert not any("test" in k for r in doc["rows"] for k in r)  # no test column exists


def test_a_user_ood_val_set_selects_and_another_score_can_gate(tmp_path):
    from tests.train_support import write_png

    data = make_task_dirs(tmp_path / "data")
    for i in range(6):
        write_png(tmp_path / "ood_val" / f"v_{i}.png", 700 + i)
    runner = CliRunner()
    run, bundle = tmp_path / "runs" / "zs", tmp_path / "bundles" / "zs"
    _ok(runner.invoke(app, ["train", "--data", str(data), "--method", "zero-shot", "--out", str(run),
                            "--bundle", str(bundle), "--energy-temperature", "3", *ARCH, *FAST]))
    assert load_bundle(bundle).manifest.scores.energy_temperature == 3.0
    _ok(runner.invoke(app, ["calibrate", "--bundle", str(bundle), "--data", str(data), "--score", "energy"]))
    calib = load_bundle(bundle).manifest.calibration
    assert calib is not None and calib.score == "energy"
    out = tmp_path / "results"
    _ok(runner.invoke(app, ["evaluate", "--data", str(data), "--bundle", f"zs={bundle}", "--out", str(out),
                            "--ood-val", str(tmp_path / "ood_val"), "--no-plots", "--no-write-manifest"]))
    summary = json.loads((out / "evaluation.json").read_text())["methods"]["zs"]
    chosen = summary["selected_on_ood_val"]["scores"]
    assert set(chosen) == {"msp", "max_logit", "energy", "mcm", "delta_energy"}
    # the selected parameters are the ones scored, and the gate's rates use the bundle's own parameters
    assert summary["score_params"]["energy_temperature"] == chosen["energy"]["chosen"]["energy_temperature"]
    assert summary["at_threshold"]["score"] == "energy"
    assert all("at_own_threshold" in v for v in summary["scores"].values())
    bad = runner.invoke(app, ["calibrate", "--bundle", str(bundle), "--data", str(data), "--score", "odin"])
    assert bad.exit_code != 0 and "valid" in bad.output


def test_a_local_checkpoint_trains_and_the_guard_says_the_model_learned_nothing(micro_clip, tmp_path, caplog):
    """The real-CLIP path (--pretrained FILE) with a checkpoint of random weights, as no weights can be downloaded
    here: it trains, names the weights, and every stage says plainly that the model is at chance."""
    from safetensors.torch import save_file

    from service.runtime import log_bundle_checks

    ckpt = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in micro_clip.model.state_dict().items()}, str(ckpt))
    data = make_task_dirs(tmp_path / "data")
    arch = ["--model", MICRO_ARCH, "--arch-config", str(ASSETS / f"{MICRO_ARCH}.json"), "--pretrained", str(ckpt)]
    bundle = tmp_path / "bundle"
    runner = CliRunner()
    res = _ok(runner.invoke(app, ["train", "--data", str(data), "--method", "coop", "--out", str(tmp_path / "run"),
                                  "--bundle", str(bundle), "--name", "clipart", "--version", "2.0.0", *arch, *FAST]))
    assert f"check: CLIP weights: {ckpt}" in res.output and "random weights" not in res.output
    assert "warning: validation accuracy" in res.output  # random images: nothing to learn
    manifest = load_bundle(bundle).manifest
    assert (manifest.name, manifest.version, manifest.architecture.pretrained) == ("clipart", "2.0.0", str(ckpt))
    assert manifest.validation is not None and manifest.validation.images == 16
    _ok(runner.invoke(app, ["calibrate", "--bundle", str(bundle), "--data", str(data)]))
    res = _ok(runner.invoke(app, ["evaluate", "--data", str(data), "--bundle", f"coop={bundle}", "--out",
                                  str(tmp_path / "results"), "--no-plots"]))
    assert "warning: ID test accuracy" in res.output
    manifest = load_bundle(bundle).manifest
    with caplog.at_level("INFO", logger="service.runtime"):
        log_bundle_checks(manifest)  # what `deltagate serve` logs at start, from the bundle's records
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("validation accuracy" in m for m in warned) and any("ID test accuracy" in m for m in warned)


def test_random_weights_are_said_in_train_output_and_the_bundle(tmp_path):
    data = make_task_dirs(tmp_path / "data")
    bundle = tmp_path / "bundle"
    res = _ok(CliRunner().invoke(app, ["train", "--data", str(data), "--method", "zero-shot", "--out",
                                       str(tmp_path / "run"), "--bundle", str(bundle), *ARCH, *FAST]))
    assert res.output.count("warning: the CLIP has random weights (--pretrained none)") == 2  # at start and end
    from models.quality import bundle_checks

    assert not bundle_checks(load_bundle(bundle).manifest)[0].ok  # the manifest keeps it: pretrained is null

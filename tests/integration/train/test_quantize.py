"""``deltagate quantize`` / ``export --quantize int8`` on the micro test bundle, and serving it as onnx-int8.

The parity record is checked against numbers recomputed here with ONNX Runtime directly (both
graphs on the same preprocessed images), not against the code's own bookkeeping.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from typer.testing import CliRunner

from deltagate.cli import app
from models.bundle import INT8_ONNX_FILE, BundleError, load_bundle
from models.preprocess import preprocess_batch
from models.scoring_module import INPUT_NAME, OUTPUT_NAMES
from service.engines import EngineError, create_engine
from tests.conftest import MICRO_CLASSES
from tests.service_support import dummy_settings, files, noise_image, serve
from tests.train_support import drawing_data

pytestmark = pytest.mark.integration


def _world(root: Path, per_class: int = 6) -> Path:
    return drawing_data(root, MICRO_CLASSES, per_class)


@pytest.fixture(scope="module")
def int8_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("int8")
    bundle, data = tmp / "bundle", _world(tmp / "world")
    shutil.copytree(tiny_bundle, bundle)
    result = CliRunner().invoke(app, ["quantize", "--bundle", str(bundle), "--data", str(data)])
    assert result.exit_code == 0, (result.output, repr(result.exception))
    assert "label agreement" in result.output and "int8 threshold" in result.output
    return bundle, data


def _argmax_and_delta(path: Path, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, _, delta, _ = session.run(list(OUTPUT_NAMES), {INPUT_NAME: pixels})
    return logits.argmax(-1), delta


def test_the_parity_record_matches_both_graphs_run_here(int8_bundle: tuple[Path, Path]) -> None:
    path, data = int8_bundle
    bundle = load_bundle(path)  # verifies every hash, the int8 file's included
    info = bundle.manifest.int8
    assert info is not None and info.method == "dynamic" and INT8_ONNX_FILE in bundle.manifest.files
    p = info.parity
    # The record runs each set in batches of 32 (here: one batch per set). Dynamic quantization scales
    # activations per batch, so int8 outputs depend on the batch: recompute with the same batches.
    sets = [sorted((data / "id" / "test").rglob("*.png")), sorted((data / "ood" / "near").glob("*.png"))]
    y32, d32, y8, d8 = [], [], [], []
    for paths in sets:
        pixels = preprocess_batch([Image.open(f) for f in paths], bundle.manifest.preprocess)  # (n, 3, H, W)
        for ys, ds, graph in ((y32, d32, bundle.onnx_path), (y8, d8, bundle.int8_path)):
            y, d = _argmax_and_delta(graph, pixels)
            ys.append(y)
            ds.append(d)
    agree = np.concatenate(y32) == np.concatenate(y8)  # (34,)
    diff = np.abs(np.concatenate(d32) - np.concatenate(d8))  # (34,)
    assert p.images == len(agree) == 34
    assert p.label_agreement == pytest.approx(float(agree.mean()), abs=1e-6)
    assert p.max_abs_delta_energy_diff == pytest.approx(float(diff.max()), rel=1e-5, abs=1e-7)
    assert 0 <= p.mean_abs_delta_energy_diff <= p.max_abs_delta_energy_diff < 1.0  # int8 stays close
    assert p.label_agreement >= 0.8
    assert set(p.id_accuracy) == {"fp32", "int8"} and p.provider == "CPUExecutionProvider"
    assert set(p.near_ood_auroc) == {"fp32", "int8"} and set(p.ood_auroc) == {"near"}
    assert p.gate_flips is not None and 0 <= p.gate_flips <= p.images
    assert info.calibration is not None and bundle.manifest.calibration is not None
    assert p.thresholds == {"fp32": bundle.manifest.calibration.threshold, "int8": info.calibration.threshold}
    # What engine=auto reads: gate decisions and the labels of the images both graphs accept, recomputed here.
    ood32 = np.concatenate(d32) < bundle.manifest.calibration.threshold
    ood8 = np.concatenate(d8) < info.calibration.threshold
    assert p.gate_flips == int((ood32 != ood8).sum())
    accepted = ~ood32 & ~ood8
    assert p.accepted_images == int(accepted.sum()) > 0
    assert p.accepted_label_agreement == pytest.approx(float(agree[accepted].mean()), abs=1e-6)
    assert p.id_delta_energy_std == pytest.approx(float(d32[0].std()), rel=1e-5) and p.bundle_data is True
    assert info.op_types == ["MatMul", "Gemm"]
    assert info.speed is not None and set(info.speed.speedup) == {"1", "8"} and info.speed.rounds == 5
    assert all(v > 0 for v in info.speed.speedup.values()) and set(info.speed.images_per_cpu_s) == {"fp32", "int8"}


def test_the_int8_graph_has_its_own_threshold_on_id_val(int8_bundle: tuple[Path, Path]) -> None:
    path, data = int8_bundle
    bundle = load_bundle(path)
    info = bundle.manifest.int8
    assert info is not None and info.calibration is not None and bundle.manifest.calibration is not None
    val = preprocess_batch([Image.open(f) for f in sorted((data / "id" / "val").rglob("*.png"))],
                           bundle.manifest.preprocess)  # (24, 3, H, W)
    _, d8 = _argmax_and_delta(bundle.int8_path, val)
    assert info.calibration.n == 24 and info.calibration.split == "id_val"
    assert info.calibration.threshold == pytest.approx(float(np.quantile(d8, 0.05)), rel=1e-5)  # target TPR 0.95
    view = bundle.int8_variant()
    assert view.onnx_path == bundle.int8_path and view.manifest.calibration == info.calibration


async def test_the_service_serves_onnx_int8_with_the_int8_threshold(int8_bundle: tuple[Path, Path]) -> None:
    path, _ = int8_bundle
    info = load_bundle(path).manifest.int8
    assert info is not None and info.calibration is not None
    async with serve(dummy_settings(engine="onnx-int8", bundle_path=path, device="cpu")) as (client, _):
        model = (await client.get("/model")).json()
        response = await client.post("/classify", files=files(noise_image(0)))
    assert response.status_code == 200, response.text
    result = response.json()["results"][0]
    assert result["label"] in MICRO_CLASSES and result["threshold"] == pytest.approx(info.calibration.threshold)
    assert "onnx-int8" in str(model) and "int8" in str(model)


def test_onnx_int8_refuses_a_bundle_without_int8_graph_and_cuda(tiny_bundle: Path,
                                                                int8_bundle: tuple[Path, Path]) -> None:
    with pytest.raises(BundleError, match="no int8 graph"):
        create_engine("onnx-int8", load_bundle(tiny_bundle), "cpu")
    engine = create_engine("onnx-int8", load_bundle(int8_bundle[0]), "cuda")
    with pytest.raises(EngineError, match="CPU only"):
        engine.load()


def test_export_quantize_without_data_records_parity_but_no_threshold(micro_clip, tmp_path: Path) -> None:
    from models.bundle import ArchitectureInfo
    from models.train.export import export_bundle, scoring_module_from_clip
    from models.train.quantize import quantize_bundle

    out = tmp_path / "b"
    module = scoring_module_from_clip(micro_clip, MICRO_CLASSES)
    export_bundle(out, module, name="m", version="0", classes=MICRO_CLASSES, preprocess=micro_clip.preprocess,
                  architecture=ArchitectureInfo(model_name="micro", open_clip_config=micro_clip.config))
    info = quantize_bundle(out).manifest.int8
    assert info is not None and info.calibration is None and info.parity.images == 64
    assert info.parity.id_accuracy == {} and info.parity.ood_auroc == {} and info.parity.gate_flips is None
    # A new export replaces the graphs: the stale int8 file goes with its manifest entry.
    export_bundle(out, module, name="m", version="0", classes=MICRO_CLASSES, preprocess=micro_clip.preprocess,
                  architecture=ArchitectureInfo(model_name="micro", open_clip_config=micro_clip.config))
    again = load_bundle(out)
    assert again.manifest.int8 is None and INT8_ONNX_FILE not in again.manifest.files
    assert not (out / INT8_ONNX_FILE).exists()


def test_export_cli_with_quantize_int8_and_fp16(tmp_path: Path) -> None:
    from tests.conftest import ASSETS, MICRO_ARCH

    out, data = tmp_path / "b", _world(tmp_path / "world", per_class=2)
    args = ["export", "--out", str(out), "--classes", ",".join(MICRO_CLASSES), "--model", MICRO_ARCH,
            "--arch-config", str(ASSETS / f"{MICRO_ARCH}.json"), "--pretrained", "none", "--data", str(data)]
    result = CliRunner().invoke(app, [*args, "--quantize", "int8", "--quantize", "fp16"])
    assert result.exit_code == 0, (result.output, repr(result.exception))
    manifest = load_bundle(out).manifest
    assert manifest.int8 is not None and manifest.int8.calibration is not None
    assert manifest.int8.parity.images == manifest.fp16.parity.images == 2 * 4 + 10  # type: ignore[union-attr]
    assert "ID accuracy" in result.output and "AUROC near" in result.output and "fp16 graph" in result.output
    bad = CliRunner().invoke(app, [*args, "--quantize", "int4"])
    assert bad.exit_code != 0 and "choose int8 or fp16" in bad.output


def _with_record(src: Path, dst: Path, **parity: object) -> Path:
    """A copy of a bundle whose int8 parity record says ``parity`` (the manifest itself is not hashed)."""
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    manifest["int8"]["parity"].update(parity)
    manifest["int8"]["speed"]["speedup"] = {"1": 2.0, "8": 2.0}  # the micro graph's own speed-up is no matter here
    (dst / "manifest.json").write_text(json.dumps(manifest))
    return dst


async def _auto(path: Path, caplog: pytest.LogCaptureFixture) -> tuple[dict, str, str]:
    """/model, the deltagate_model_info line and the start-up log of engine=auto on a bundle."""
    with caplog.at_level(logging.INFO, logger="service.runtime"):
        async with serve(dummy_settings(engine="auto", bundle_path=path, device="cpu")) as (client, _):
            model = (await client.get("/model")).json()
            assert (await client.post("/classify", files=files(noise_image(0)))).status_code == 200
            metrics = (await client.get("/metrics")).text
    info = next(line for line in metrics.splitlines() if line.startswith("deltagate_model_info{"))
    log = "\n".join(r.getMessage() for r in caplog.records if r.name == "service.runtime")
    return model, info, log


async def test_auto_serves_the_int8_graph_when_its_parity_passes(int8_bundle: tuple[Path, Path], tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    path = _with_record(int8_bundle[0], tmp_path / "b", gate_flips=0, accepted_label_agreement=1.0,
                        mean_abs_delta_energy_diff=0.0)
    model, info, log = await _auto(path, caplog)
    assert model["engine"] == "onnx-int8" and model["precision"] == "int8"
    choice = model["engine_choice"]
    assert choice["requested"] == "auto" and choice["reason"] == "int8_passed" and "faithful" in choice["detail"]
    assert 'engine="onnx-int8"' in info and 'engine_reason="int8_passed"' in info and 'engine_requested="auto"' in info
    assert "engine onnx-int8 (int8_passed): the int8 graph is faithful" in log


async def test_auto_serves_float32_and_says_why_when_the_int8_parity_fails(
        int8_bundle: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    images = load_bundle(int8_bundle[0]).manifest.int8.parity.images  # type: ignore[union-attr]
    path = _with_record(int8_bundle[0], tmp_path / "b", gate_flips=images // 2, accepted_label_agreement=1.0,
                        mean_abs_delta_energy_diff=0.0)
    model, info, log = await _auto(path, caplog)
    assert model["engine"] == "onnx" and model["precision"] == "float32"
    choice = model["engine_choice"]
    assert choice["reason"] == "int8_parity_failed"
    assert f"{images // 2} of {images} gate decisions flip" in choice["detail"]
    assert [c["code"] for c in choice["checks"]] == ["parity_failed", "no_graph"]
    assert 'engine="onnx"' in info and 'engine_reason="int8_parity_failed"' in info
    assert "engine onnx (int8_parity_failed): model.onnx (float32) serves: the int8 graph is not faithful" in log


async def test_auto_never_serves_int8_without_a_parity_record(int8_bundle: tuple[Path, Path], tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    # A record written before the fields the rule reads (as an older deltagate wrote it).
    path = _with_record(int8_bundle[0], tmp_path / "b", gate_flips=None, accepted_images=None,
                        accepted_label_agreement=None, bundle_data=None)
    model, info, _ = await _auto(path, caplog)
    assert model["engine"] == "onnx" and model["engine_choice"]["reason"] == "int8_no_parity_record"
    assert 'engine_reason="int8_no_parity_record"' in info


def test_quantize_without_data_is_never_served_by_auto(tiny_bundle: Path, tmp_path: Path) -> None:
    from service.engines import choose_engine

    path = tmp_path / "b"
    shutil.copytree(tiny_bundle, path)
    result = CliRunner().invoke(app, ["quantize", "--bundle", str(path)])  # 64 drawings: no threshold, no record
    assert result.exit_code == 0, (result.output, repr(result.exception))
    assert "engine=auto does not serve it (no_threshold)" in result.output
    choice = choose_engine("auto", load_bundle(path), "cpu")
    assert (choice.engine, choice.reason) == ("onnx", "int8_no_threshold")

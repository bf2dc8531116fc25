"""``deltagate quantize --precision fp16`` on the micro test bundle: the graph, its parity record, serving it.

The parity record is checked against numbers recomputed here with ONNX Runtime directly, and the float32 head
against the graph's own inferred tensor types, not against the converter's bookkeeping.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image
from typer.testing import CliRunner

from deltagate.cli import app
from models.bundle import FP16_DISABLED_OPTIMIZERS, FP16_ONNX_FILE, BundleError, load_bundle
from models.preprocess import preprocess_batch
from models.scoring_module import INPUT_NAME, OUTPUT_NAMES
from models.train.export import parity_images
from service.engines import EngineError, create_engine
from tests.conftest import MICRO_CLASSES
from tests.service_support import dummy_settings, files, noise_image, serve
from tests.train_support import drawing_data

pytestmark = pytest.mark.integration

FLOAT, FLOAT16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


@pytest.fixture(scope="module")
def fp16_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("fp16")
    bundle, data = tmp / "bundle", drawing_data(tmp / "world", MICRO_CLASSES)
    shutil.copytree(tiny_bundle, bundle)
    result = CliRunner().invoke(app, ["quantize", "--bundle", str(bundle), "--data", str(data), "--precision", "fp16"])
    assert result.exit_code == 0, (result.output, repr(result.exception))
    assert "fp16 graph model.fp16.onnx" in result.output and "gate decisions that differ" in result.output
    return bundle, data


def _argmax_and_delta(path: Path, pixels: np.ndarray, fp16: bool) -> tuple[np.ndarray, np.ndarray]:
    # the float16 graph without the NCHWc pass, which crashes on a float16 ViT (FP16_DISABLED_OPTIMIZERS)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"],
                                   disabled_optimizers=list(FP16_DISABLED_OPTIMIZERS) if fp16 else [])
    logits, _, delta, _ = session.run(list(OUTPUT_NAMES), {INPUT_NAME: pixels})
    return logits.argmax(-1), delta


def test_the_parity_record_matches_both_graphs_run_here(fp16_bundle: tuple[Path, Path]) -> None:
    path, data = fp16_bundle
    bundle = load_bundle(path)  # verifies every hash, the float16 file's included
    info, cal = bundle.manifest.fp16, bundle.manifest.calibration
    assert info is not None and cal is not None and FP16_ONNX_FILE in bundle.manifest.files
    fp16_path = bundle.fp16_variant().onnx_path
    sets = [sorted((data / "id" / "test").rglob("*.png")), sorted((data / "ood" / "near").glob("*.png"))]
    y32, d32, y16, d16 = [], [], [], []
    for paths in sets:  # one batch per set, as the record's batches of 32
        pixels = preprocess_batch([Image.open(f) for f in paths], bundle.manifest.preprocess)  # (n, 3, H, W)
        for ys, ds, graph in ((y32, d32, bundle.onnx_path), (y16, d16, fp16_path)):
            y, d = _argmax_and_delta(graph, pixels, graph == fp16_path)
            ys.append(y)
            ds.append(d)
    a32, a16 = np.concatenate(d32), np.concatenate(d16)  # (34,) each
    p = info.parity
    assert p.images == len(a32) == 34 and p.provider == "CPUExecutionProvider"
    assert p.label_agreement == pytest.approx(float((np.concatenate(y32) == np.concatenate(y16)).mean()), abs=1e-6)
    assert p.max_abs_delta_energy_diff == pytest.approx(float(np.abs(a32 - a16).max()), rel=1e-5, abs=1e-7)
    assert 0 < p.max_abs_delta_energy_diff < 0.05  # float16 rounding moves ΔEnergy, a little
    # The float16 graph keeps the float32 threshold: a flip is an image on either side of it (OOD: score < t).
    assert p.thresholds == {"fp32": cal.threshold, "fp16": cal.threshold}
    assert p.gate_flips == int(((a32 < cal.threshold) != (a16 < cal.threshold)).sum())
    assert set(p.id_accuracy) == {"fp32", "fp16"} and set(p.ood_auroc) == {"near"}
    assert info.features and info.float32_nodes > 0
    # For comparison only: where a threshold fitted on the float16 graph's own ID val scores would lie.
    val = preprocess_batch([Image.open(f) for f in sorted((data / "id" / "val").rglob("*.png"))],
                           bundle.manifest.preprocess)  # (24, 3, H, W)
    assert info.refit_threshold == pytest.approx(float(np.quantile(_argmax_and_delta(fp16_path, val, True)[1], 0.05)),
                                                 rel=1e-5)  # target TPR 0.95


def _types(model: onnx.ModelProto) -> dict[str, int]:
    g = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*g.input, *g.output, *g.value_info)}
    return {**types, **{t.name: t.data_type for t in g.initializer}}


def test_the_tower_is_float16_and_every_score_float32(fp16_bundle: tuple[Path, Path]) -> None:
    bundle = load_bundle(fp16_bundle[0])
    model = onnx.load(str(bundle.fp16_variant().onnx_path))
    types, producer = _types(model), {o: n for n in model.graph.node for o in n.output}
    # Walk back from every output through float tensors up to the casts from float16: all of it is float32.
    boundary, seen, todo = set(), set(), [o.name for o in model.graph.output]
    while todo:
        name = todo.pop()
        if name in seen or types.get(name) not in (FLOAT, FLOAT16):  # integer shape arithmetic is not scored
            continue
        seen.add(name)
        assert types[name] == FLOAT, f"{name} is float16 in the head"
        node = producer.get(name)
        if node is None:  # an initializer (class embeddings, logit scale) or the float32 pixel input
            continue
        if node.op_type == "Cast" and types[node.input[0]] == FLOAT16:
            boundary.add(node.input[0])
        else:
            todo.extend(node.input)
    assert len(boundary) == 1  # one tensor crosses: the image features
    weights = [t for t in model.graph.initializer if t.dims and np.prod(t.dims) > 64]
    assert weights and all(t.data_type == FLOAT16 or t.name in seen for t in weights)  # tower weights in float16
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [FLOAT]
    assert bundle.manifest.files[FP16_ONNX_FILE].size < 0.7 * bundle.manifest.files["model.onnx"].size


def test_the_converter_alone_would_round_the_head_to_float16(tiny_bundle: Path) -> None:
    """Why convert_float16 folds casts: ORT's converter leaves a float16 round trip between blocked nodes."""
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    from models.train.float16 import float16_in_head, head_nodes, tower_features

    model = onnx.load(str(load_bundle(tiny_bundle).onnx_path))
    features = tower_features(model)
    head = head_nodes(model, features)
    raw = convert_float_to_float16(model, keep_io_types=True, node_block_list=sorted(head))
    OnnxModel.graph_topological_sort(raw.graph)
    assert float16_in_head(raw, head, features)


def test_a_graph_without_module_scopes_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    from models.train.float16 import Float16Error, convert_float16

    model = onnx.load(str(load_bundle(tiny_bundle).onnx_path))
    for node in model.graph.node:
        del node.metadata_props[:]
    onnx.save(model, str(tmp_path / "bare.onnx"))
    with pytest.raises(Float16Error, match="name_scopes"):
        convert_float16(tmp_path / "bare.onnx", tmp_path / "bare.fp16.onnx")
    assert not (tmp_path / "bare.fp16.onnx").exists()


def test_onnx_fp16_gives_the_labels_of_onnx(fp16_bundle: tuple[Path, Path], tiny_bundle: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    from service.engines import onnx_fp16

    onnx_fp16._warn_cpu.cache_clear()  # the warning is once per process
    bundle = load_bundle(fp16_bundle[0])
    pixels = preprocess_batch(parity_images(16, seed=2), bundle.manifest.preprocess)  # (16, 3, H, W)
    outputs, facts = {}, {}
    for name in ("onnx", "onnx-fp16"):
        engine = create_engine(name, bundle, "cpu")
        engine.load()
        outputs[name], facts[name] = engine.infer(pixels), engine.describe()
        engine.close()
    ref, half = outputs["onnx"], outputs["onnx-fp16"]
    assert all(v.dtype == np.float32 for v in half.values())
    np.testing.assert_array_equal(half["logits"].argmax(-1), ref["logits"].argmax(-1))
    np.testing.assert_allclose(half["delta_energy"], ref["delta_energy"], atol=0.05)
    assert facts["onnx-fp16"]["precision"] == "float16" and facts["onnx"]["precision"] == "float32"
    assert facts["onnx-fp16"]["device"] == "cpu" and facts["onnx-fp16"]["providers"] == "CPUExecutionProvider"
    assert [r.message for r in caplog.records if "parity checks, not speed" in r.message]
    with pytest.raises(EngineError, match="device=cuda"):  # no CUDA provider here: refused, not run on the CPU
        create_engine("onnx-fp16", bundle, "cuda").load()
    with pytest.raises(BundleError, match="no fp16 graph"):
        create_engine("onnx-fp16", load_bundle(tiny_bundle), "cpu")


async def test_the_service_serves_onnx_fp16_with_the_float32_threshold(fp16_bundle: tuple[Path, Path]) -> None:
    path, _ = fp16_bundle
    cal = load_bundle(path).manifest.calibration
    assert cal is not None
    async with serve(dummy_settings(engine="onnx-fp16", bundle_path=path, device="cpu")) as (client, _):
        model = (await client.get("/model")).json()
        response = await client.post("/classify", files=files(noise_image(0)))
        metrics = (await client.get("/metrics")).text
    assert response.status_code == 200, response.text
    result = response.json()["results"][0]
    assert result["label"] in MICRO_CLASSES and result["threshold"] == pytest.approx(cal.threshold)
    assert model["engine"] == "onnx-fp16" and model["precision"] == "float16"
    info = next(line for line in metrics.splitlines() if line.startswith("deltagate_model_info{"))
    assert 'engine="onnx-fp16"' in info and 'precision="float16"' in info

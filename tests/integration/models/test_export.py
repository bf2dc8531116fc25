"""ONNX export parity: ONNX Runtime vs PyTorch on real preprocessed images, dynamic batch axis."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from models.bundle import ArchitectureInfo, load_bundle
from models.preprocess import preprocess_batch
from models.scoring_module import FEATURES_NAME, INPUT_NAME, OUTPUT_NAMES, load_scoring_module
from models.train.export import (
    ExportConfig,
    OnnxParityError,
    check_onnx_parity,
    export_bundle,
    parity_images,
    scoring_module_from_clip,
)

pytestmark = pytest.mark.integration

ATOL = 1e-3  # on every output; logits are cosines x logit_scale


def _assert_parity(bundle_dir, batch_sizes):
    bundle = load_bundle(bundle_dir)
    module = load_scoring_module(bundle)
    session = ort.InferenceSession(str(bundle.onnx_path), providers=["CPUExecutionProvider"])
    pool = parity_images(max(batch_sizes), seed=7)
    for b in batch_sizes:
        x = preprocess_batch(pool[:b], bundle.manifest.preprocess)  # (b, 3, H, W)
        got = session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})
        with torch.no_grad():
            want = [t.numpy() for t in module(torch.from_numpy(x))]
        for name, g, w in zip(OUTPUT_NAMES, got, want, strict=True):
            assert g.shape == w.shape, name
            np.testing.assert_allclose(g, w, atol=ATOL, rtol=1e-4, err_msg=f"{name} at batch {b}")


def test_micro_bundle_parity_across_batch_sizes(tiny_bundle):
    _assert_parity(tiny_bundle, [1, 2, 5, 17])
    m = load_bundle(tiny_bundle).manifest
    assert m.onnx is not None and m.onnx.dynamic_batch and max(m.onnx.parity_max_abs_diff.values()) < ATOL


def test_onnx_graph_has_symbolic_batch_axis(tiny_bundle):
    session = ort.InferenceSession(str(load_bundle(tiny_bundle).onnx_path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == INPUT_NAME and isinstance(inp.shape[0], str) and inp.shape[1:] == [3, 32, 32]
    assert [o.name for o in session.get_outputs()] == [*OUTPUT_NAMES, FEATURES_NAME]  # features: label sets


def test_parity_check_catches_a_mismatch(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    other = load_scoring_module(bundle)
    other.class_embeddings.copy_(torch.roll(other.class_embeddings, 1, dims=0))
    x = preprocess_batch(parity_images(2), bundle.manifest.preprocess)
    with pytest.raises(OnnxParityError, match="logits"):
        check_onnx_parity(other, bundle.onnx_path, [x], atol=ATOL, rtol=1e-4)


@pytest.mark.slow
def test_vit_b_32_random_weights_parity(tmp_path):
    from models.clip_loading import load_clip

    torch.manual_seed(0)
    lc = load_clip("ViT-B-32")
    classes = ["cat", "dog", "car", "tree", "house"]
    module = scoring_module_from_clip(lc, classes)
    out = tmp_path / "vitb32"
    export_bundle(
        out, module, name="vitb32-random", version="0", classes=classes, preprocess=lc.preprocess,
        architecture=ArchitectureInfo(model_name="ViT-B-32", open_clip_config=lc.config),
        config=ExportConfig(parity_batch_sizes=(1, 4)),
    )
    _assert_parity(out, [1, 3, 6])

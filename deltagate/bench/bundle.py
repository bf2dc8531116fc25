"""The benchmark bundle: a random-weight CLIP (the cost of the real one) made servable for timing.

A random-weight export has no ID data to calibrate on, and the service refuses a bundle without a
threshold. For benchmarking only, every graph gets a threshold fitted on its own ΔEnergy of 64
synthetic drawings (``split="bench-only: ..."`` in the manifest says so); the threshold does not
change the cost of a request. The int8 and float16 graphs' parity records are on drawings too, so
they say how far the graphs' outputs are apart, not what they cost in accuracy (that needs a trained
bundle and its data: ``deltagate quantize --bundle B --data ROOT``).

Without the ONNX export (``onnx=False``) nothing here imports ``onnx`` or ``onnxscript``: the GPU
run (:mod:`deltagate.bench.gpu`) builds its bundle so on a machine that has neither.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.bundle import Bundle, load_bundle
from models.calibration import CalibrationRecord
from models.preprocess import PreprocessConfig, preprocess_batch

__all__ = ["BENCH_CLASSES", "BENCH_SPLIT", "make_bench_bundle"]

logger = logging.getLogger(__name__)

BENCH_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
BENCH_SPLIT = "bench-only: 64 synthetic drawings"
CALIBRATION_SEED = 1  # drawings of the threshold; the parity drawings use seed 0


def make_bench_bundle(out: Path, model: str = "ViT-B-32", *, onnx: bool = True, int8: bool = True,
                      fp16: bool = False, text: bool = True, seed: int = 0) -> Bundle:
    """Export ``model`` with random weights and a bench-only threshold, with the graphs asked for.

    Args:
        out: bundle directory.
        model: open_clip architecture.
        onnx: also export ``model.onnx`` (False: weights only, for the torch engine).
        int8: also write the int8 graph (dynamic quantization) with its own bench-only threshold.
        fp16: also write the float16 graph (engine onnx-fp16), which keeps the float32 threshold.
        text: with ``onnx``, also the text side (label sets), with a bench-only default rule fitted on the
            64 drawings labelled in turn (it sets a threshold per K; with random weights it means nothing else).
        seed: torch seed of the random weights.

    Returns:
        The servable bundle.

    Raises:
        ValueError: int8 or fp16 without the ONNX export they convert.
    """
    from models.bundle import ArchitectureInfo
    from models.clip_loading import load_clip
    from models.train.export import ExportConfig, export_bundle, parity_images, scoring_module_from_clip

    if (int8 or fp16) and not onnx:
        raise ValueError("the int8 and float16 graphs are made from model.onnx: keep onnx=True")
    torch.manual_seed(seed)
    loaded = load_clip(model, "none")
    # One prompt template: with random weights the prompts mean nothing, and 80 of them cost minutes.
    module = scoring_module_from_clip(loaded, BENCH_CLASSES, templates=("a photo of a {}.",))
    drawings = preprocess_batch(parity_images(64, seed=CALIBRATION_SEED), loaded.preprocess)  # (64, 3, H, W)
    with torch.no_grad():
        scores = module(torch.from_numpy(drawings))[2].numpy()  # (64,) ΔEnergy
    bundle = export_bundle(
        out, module, name=f"bench-{model.lower()}-random", version="0", classes=list(BENCH_CLASSES),
        preprocess=loaded.preprocess, prompt={"method": "zero-shot", "weights": "random (benchmark only)"},
        architecture=ArchitectureInfo(model_name=model, open_clip_config=loaded.config, pretrained=None),
        config=ExportConfig(onnx=onnx), calibration=CalibrationRecord.from_scores(scores, split=BENCH_SPLIT),
    )
    if onnx and text:
        bundle = _add_text_side(out, loaded, drawings)
    if int8 or fp16:
        bundle = _add_graphs(out, loaded.preprocess, drawings, int8, fp16)
    logger.info("bench bundle %s ready", out)
    return bundle


def _add_text_side(out: Path, loaded: Any, drawings: np.ndarray) -> Bundle:
    """The text side (one template, as the class embeddings) and a bench-only default rule per K."""
    from models.bundle import update_manifest
    from models.label_set_create import VisionFeatures
    from models.train.label_rules import LabelledFeatures, fit_adhoc_rule
    from models.train.text_export import export_text_side

    bundle = export_text_side(out, loaded, templates=("a photo of a {}.",), baked_mode="zero-shot")
    labels = np.arange(len(drawings)) % len(BENCH_CLASSES)  # (64,)
    data = LabelledFeatures(VisionFeatures(bundle)(drawings), labels, BENCH_CLASSES, BENCH_SPLIT)
    rule = fit_adhoc_rule(bundle, data, "zero-shot", subsets_per_k=20)
    assert bundle.manifest.text is not None
    return update_manifest(out, text=bundle.manifest.text.model_copy(update={"rules": {"zero-shot": rule}}))


def _add_graphs(out: Path, preprocess: PreprocessConfig, threshold_images: np.ndarray, int8: bool,
                fp16: bool) -> Bundle:
    """The int8 and/or float16 graph, compared with model.onnx on 64 drawings (seed 0)."""
    from models.train.export import parity_images
    from models.train.float16 import float16_bundle
    from models.train.quantize import EvalImages, QuantizeConfig, quantize_bundle

    parity = preprocess_batch(parity_images(64, seed=0), preprocess)  # (64, 3, H, W)
    images = EvalImages("64 synthetic drawings (parity_images seed 0); threshold: 64 more (seed 1)",
                        parity, None, {}, threshold_images, val_split=BENCH_SPLIT)
    if int8:
        quantize_bundle(out, QuantizeConfig(), images=images)
    if fp16:
        float16_bundle(out, images=images)
    return load_bundle(out, verify=False)  # each step above hashed what it wrote

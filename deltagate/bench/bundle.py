"""The benchmark bundle: a random-weight CLIP (the cost of the real one) made servable for timing.

A random-weight export has no ID data to calibrate on, and the service refuses a bundle without a
threshold. For benchmarking only, both graphs get a threshold fitted on their own ΔEnergy of 64
synthetic drawings (``split="bench-only: ..."`` in the manifest says so); the threshold does not
change the cost of a request. The int8 graph's parity record is on drawings too, so it says how far
the graphs' outputs are apart, not what int8 costs in accuracy (that needs a trained bundle and its
data: ``deltagate quantize --bundle B --data ROOT``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from models.bundle import Bundle
from models.calibration import CalibrationRecord
from models.preprocess import preprocess_batch

__all__ = ["BENCH_CLASSES", "BENCH_SPLIT", "make_bench_bundle"]

logger = logging.getLogger(__name__)

BENCH_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
BENCH_SPLIT = "bench-only: 64 synthetic drawings"
CALIBRATION_SEED = 1  # drawings of the threshold; the parity drawings use seed 0


def make_bench_bundle(out: Path, model: str = "ViT-B-32", int8: bool = True, seed: int = 0) -> Bundle:
    """Export ``model`` with random weights, give it a bench-only threshold and (optionally) an int8 graph.

    Args:
        out: bundle directory.
        model: open_clip architecture.
        int8: also write the int8 graph (dynamic quantization) with its own bench-only threshold.
        seed: torch seed of the random weights.

    Returns:
        The servable bundle.
    """
    from models.bundle import ArchitectureInfo
    from models.clip_loading import load_clip
    from models.train.export import ExportConfig, export_bundle, parity_images, scoring_module_from_clip
    from models.train.quantize import EvalImages, QuantizeConfig, quantize_bundle

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
        config=ExportConfig(), calibration=CalibrationRecord.from_scores(scores, split=BENCH_SPLIT),
    )
    if int8:
        parity = preprocess_batch(parity_images(64, seed=0), loaded.preprocess)  # (64, 3, H, W)
        images = EvalImages("64 synthetic drawings (parity_images seed 0); threshold: 64 more (seed 1)",
                            parity, None, {}, drawings, val_split=BENCH_SPLIT)
        bundle = quantize_bundle(out, QuantizeConfig(), images=images)
    logger.info("bench bundle %s ready", out)
    return bundle

"""Fast decode against full decode: what reduced-scale JPEG decoding changes, and what it saves.

The service decodes a JPEG much larger than the model input at a reduced DCT scale
(:func:`models.preprocess.decode_for_model` with ``fast``), then runs the exact preprocessing.
This measures, on the same images through the same engine, full decode vs fast decode:

- label agreement, OOD-decision agreement and max |ΔEnergy| difference;
- the per-image CPU cost of decode + preprocess (median of timed repeats), and the speed-up.

Workloads: the synthetic world's ID classes drawn at the bundle's input size (what the model was
trained on; too small for a reduced decode, so it must change nothing), and the same drawings
rendered large and saved as photo-sized JPEGs (1-12 MP by default).
"""

from __future__ import annotations

import io
import logging
import statistics
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from deltagate.bench.engine import load_engine
from deltagate.bench.report import machine_info
from models.preprocess import DRAFT_MARGIN, decode_for_model, preprocess_image
from service.runtime import LoadedModel

__all__ = ["DEFAULT_MEGAPIXELS", "world_classes", "world_jpegs", "world_workloads", "compare_decodes", "decode_report"]

logger = logging.getLogger(__name__)

DEFAULT_MEGAPIXELS = (1.0, 3.0, 6.0, 12.0)
_RENDER_SIDE = 768  # drawings are rendered at this side, then resized to photo sizes (4:3)


def world_classes(bundle_classes: Sequence[str]) -> list[str]:
    """The world's categories to draw for a bundle: its classes the world knows, else the world's ID classes."""
    from proxy.world.synth import WorldConfig

    known = set(WorldConfig().categories)
    return [c for c in bundle_classes if c in known] or list(WorldConfig().id_classes)


def world_jpegs(classes: Sequence[str], n: int, side: int, megapixels: float | None, seed: int) -> list[bytes]:
    """Synthetic-world drawings of ``classes`` (ID styles) as JPEG bytes (quality 90).

    Args:
        classes: object categories of the world, drawn round-robin.
        n: how many images.
        side: render side when ``megapixels`` is None (the native, model-input size).
        megapixels: if given, render at ``_RENDER_SIDE`` and resize to a 4:3 image of that size.
        seed: image i is drawn from ``default_rng([seed, i])``.
    """
    from proxy.world.render import render_objects, sample_object

    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        style = str(rng.choice(["flat", "outline", "shaded"]))
        render = side if megapixels is None else _RENDER_SIDE
        img, _ = render_objects(rng, [sample_object(rng, classes[i % len(classes)])], style, render, 1)
        if megapixels is not None:
            width = int(round((megapixels * 1e6 * 4 / 3) ** 0.5))
            img = img.resize((width, width * 3 // 4), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        img.convert("RGB").save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out



def world_workloads(classes: Sequence[str], n: int, side: int, megapixels: Sequence[float],
                    seed: int) -> Iterator[tuple[str, str, list[bytes]]]:
    """The decode benchmarks' workloads, as (name, "WxH", JPEGs): ``world_native`` (drawn at the model
    input size ``side``), then ``world_<mp>mp`` for each photo size of ``megapixels``."""
    logger.info("synthetic world at the model input size (%d px)", side)
    yield "world_native", f"{side}x{side}", world_jpegs(classes, n, side, None, seed)
    for mp in megapixels:
        logger.info("synthetic world at %.1f MP", mp)
        images = world_jpegs(classes, n, side, mp, seed)
        w, h = Image.open(io.BytesIO(images[0])).size
        yield f"world_{mp:g}mp", f"{w}x{h}", images


def _timed_pixels(data: bytes, model: LoadedModel, fast: bool, repeats: int) -> tuple[np.ndarray, float, bool]:
    """(preprocessed (3, H, W), median seconds of decode + preprocess, whether a reduced decode ran)."""
    cfg = model.manifest.preprocess
    seconds, pixels, drafted = [], np.empty(0), False
    for _ in range(repeats):
        start = time.perf_counter()
        img = decode_for_model(data, cfg, fast=fast)
        pixels = preprocess_image(img, cfg)  # (3, H, W)
        seconds.append(time.perf_counter() - start)
        drafted = img.size != Image.open(io.BytesIO(data)).size
    return pixels, statistics.median(seconds), drafted


def compare_decodes(model: LoadedModel, images: Sequence[bytes], repeats: int = 3) -> dict[str, Any]:
    """Full vs fast decode of ``images`` through ``model``: agreement, ΔEnergy difference, time."""
    calib = model.manifest.calibration
    assert calib is not None  # bundles are calibrated (the engine loader refuses others)
    full = [_timed_pixels(im, model, False, repeats) for im in images]
    fast = [_timed_pixels(im, model, True, repeats) for im in images]
    out_full = model.infer(np.stack([p for p, _, _ in full]))  # (N, ...) one forward per variant
    out_fast = model.infer(np.stack([p for p, _, _ in fast]))
    labels_full, labels_fast = out_full["probs"].argmax(1), out_fast["probs"].argmax(1)  # (N,), (N,)
    de_full, de_fast = out_full["delta_energy"], out_fast["delta_energy"]  # (N,), (N,)
    t_full, t_fast = [t for _, t, _ in full], [t for _, t, _ in fast]
    return {
        "images": len(images),
        "reduced_decodes": int(sum(d for _, _, d in fast)),
        "label_agreement": float(np.mean(labels_full == labels_fast)),
        "ood_decision_agreement": float(np.mean(calib.is_ood(de_full) == calib.is_ood(de_fast))),
        "max_abs_delta_energy_diff": float(np.max(np.abs(de_full - de_fast))),
        "median_abs_delta_energy_diff": float(np.median(np.abs(de_full - de_fast))),
        "max_abs_pixel_diff": float(max(np.abs(a - b).max() for (a, _, _), (b, _, _) in zip(full, fast, strict=True))),
        "full_decode_ms_median": round(1000 * statistics.median(t_full), 2),
        "fast_decode_ms_median": round(1000 * statistics.median(t_fast), 2),
        "speedup_median": round(statistics.median(t_full) / statistics.median(t_fast), 2),
    }


def decode_report(
    command: str, bundle: Path, engine: str, n: int, megapixels: Sequence[float], seed: int, repeats: int
) -> dict[str, Any]:
    """The whole comparison as a JSON-ready report.

    Args:
        command: the command line that produced it (stored in the report).
        bundle: bundle directory.
        engine: engine name (e.g. "onnx").
        n: images per workload.
        megapixels: photo sizes of the large-image workloads.
        seed: image seed.
        repeats: timed decodes per image and variant.
    """
    model = load_engine(bundle, engine, "cpu")
    classes = world_classes(model.manifest.classes)
    size = model.manifest.preprocess.image_size
    workloads = {name: {"size": dims, **compare_decodes(model, images, repeats)}
                 for name, dims, images in world_workloads(classes, n, size, megapixels, seed)}
    model.engine.close()
    return {
        "kind": "decode", "command": command, "bundle": str(bundle), "engine": engine, "model_input": size,
        "draft_margin": DRAFT_MARGIN, "classes": classes, "seed": seed, "repeats": repeats,
        "machine": machine_info(), "workloads": workloads,
    }

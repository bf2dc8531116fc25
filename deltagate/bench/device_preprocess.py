"""Device input pipeline against the CPU path: what decoding and preprocessing on the device changes.

The same images go through the same engine twice per comparison:

- ``cpu_exact``: PIL full decode + :func:`models.preprocess.preprocess_image` (training and evaluation);
- ``cpu_fast``: the CPU service path (reduced-scale DCT decode of large JPEGs, then the same preprocessing);
- ``device``: :class:`service.device_input.DeviceInput` (torchvision ``decode_jpeg`` on the device, resize,
  crop and normalise with torch on the device).

Reported per workload, device vs each CPU variant: label agreement, OOD-decision agreement, max and median
|ΔEnergy| difference, max |pixel| difference (normalised units), and how many images took the device path.
Workloads: the synthetic world's drawings at the bundle's input size, the same drawings as photo-sized JPEGs
(1-12 MP by default), and a mixed set that must take the CPU fallback (grayscale, progressive, CMYK JPEGs,
PNG). Run with ``--device cuda`` on a GPU it also measures nvJPEG against libjpeg-turbo.
"""

from __future__ import annotations

import io
import logging
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from deltagate.bench.decode import world_classes, world_workloads
from deltagate.bench.engine import load_engine
from deltagate.bench.report import machine_info
from models.preprocess import decode_and_preprocess
from service.device_input import DeviceInput, stack_pixels
from service.runtime import LoadedModel

__all__ = ["DEFAULT_MEGAPIXELS", "variant_jpegs", "compare_paths", "device_preprocess_report"]

logger = logging.getLogger(__name__)

DEFAULT_MEGAPIXELS = (1.0, 12.0)


def variant_jpegs(images: Sequence[bytes]) -> list[bytes]:
    """The drawings re-encoded as grayscale, progressive and CMYK JPEGs and as PNG, round-robin.

    Grayscale and progressive JPEGs take the device path where the decoder takes them; CMYK and PNG
    always take the CPU path.
    """
    out = []
    for i, data in enumerate(images):
        img, buf = Image.open(io.BytesIO(data)).convert("RGB"), io.BytesIO()
        kind = i % 4
        if kind == 0:
            img.convert("L").save(buf, "JPEG", quality=90)
        elif kind == 1:
            img.save(buf, "JPEG", quality=90, progressive=True)
        elif kind == 2:
            img.convert("CMYK").save(buf, "JPEG", quality=90)
        else:
            img.save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def _cpu_pixels(data: bytes, model: LoadedModel, fast: bool) -> np.ndarray:
    cfg = model.manifest.preprocess
    return decode_and_preprocess(data, cfg, fast=fast)  # (3, S, S)


def _timed(fn: Any, repeats: int) -> tuple[Any, float]:
    """(last result, median seconds) of ``repeats`` calls (the device is synchronised inside the timing)."""
    seconds, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return result, statistics.median(seconds)


def _agreement(model: LoadedModel, a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, float]:
    calib = model.manifest.calibration
    assert calib is not None  # the bench bundles are calibrated
    de_a, de_b = a["delta_energy"], b["delta_energy"]  # (N,), (N,)
    diff = np.abs(de_a.astype(np.float64) - de_b)  # (N,)
    return {
        "label_agreement": float(np.mean(a["probs"].argmax(1) == b["probs"].argmax(1))),
        "ood_decision_agreement": float(np.mean(calib.is_ood(de_a) == calib.is_ood(de_b))),
        "max_abs_delta_energy_diff": float(diff.max()),
        "median_abs_delta_energy_diff": float(np.median(diff)),
    }


def compare_paths(model: LoadedModel, images: Sequence[bytes], device: str, repeats: int = 3) -> dict[str, Any]:
    """CPU exact, CPU fast and device preprocessing of ``images`` through ``model``.

    Args:
        model: a loaded engine.
        images: encoded images.
        device: where the device path runs ("cpu" measures the resize/normalise maths; "cuda" adds nvJPEG).
        repeats: timed runs per image and path (median).
    """
    cfg = model.manifest.preprocess
    dev = DeviceInput(cfg, device, max_pixels=100_000_000)
    exact, fast, on_device = [], [], []
    times: dict[str, list[float]] = {"cpu_exact": [], "cpu_fast": [], "device": []}
    for data in images:
        px, t = _timed(lambda d=data: _cpu_pixels(d, model, False), repeats)
        exact.append(px)
        times["cpu_exact"].append(t)
        px, t = _timed(lambda d=data: _cpu_pixels(d, model, True), repeats)
        fast.append(px)
        times["cpu_fast"].append(t)
        (px,), t = _timed(lambda d=data: dev.prepare([d]), repeats)
        if isinstance(px, BaseException):
            raise px
        on_device.append(px)
        times["device"].append(t)
    device_px = stack_pixels(on_device, torch.device("cpu")).numpy()  # (N, 3, S, S)
    exact_px, fast_px = np.stack(exact), np.stack(fast)  # (N, 3, S, S) each
    out = {name: model.infer(px) for name, px in (("cpu_exact", exact_px), ("cpu_fast", fast_px),
                                                   ("device", device_px))}
    return {
        "images": len(images),
        "device_decoded": dev.counters.device // repeats,
        "cpu_routed": dev.counters.cpu // repeats,
        "device_refused": dev.counters.refused // repeats,
        "device_vs_cpu_exact": {**_agreement(model, out["cpu_exact"], out["device"]),
                                "max_abs_pixel_diff": float(np.abs(exact_px - device_px).max())},
        "device_vs_cpu_fast": {**_agreement(model, out["cpu_fast"], out["device"]),
                               "max_abs_pixel_diff": float(np.abs(fast_px - device_px).max())},
        "ms_median": {name: round(1000 * statistics.median(ts), 2) for name, ts in times.items()},
    }


def device_preprocess_report(
    command: str, bundle: Path, engine: str, device: str, n: int, megapixels: Sequence[float], seed: int,
    repeats: int,
) -> dict[str, Any]:
    """The whole comparison as a JSON-ready report.

    Args:
        command: the command line that produced it (stored in the report).
        bundle: bundle directory.
        engine: engine that scores every variant (torch or onnx; always on the CPU for comparability).
        device: where the device path decodes and preprocesses.
        n: images per workload.
        megapixels: photo sizes of the large-image workloads.
        seed: image seed.
        repeats: timed runs per image and path.
    """
    model = load_engine(bundle, engine, "cpu")
    classes = world_classes(model.manifest.classes)
    size = model.manifest.preprocess.image_size
    workloads: dict[str, dict[str, Any]] = {}
    for name, dims, images in world_workloads(classes, n, size, megapixels, seed):
        workloads[name] = {"size": dims, **compare_paths(model, images, device, repeats)}
        if name == "world_native":  # the formats the device path hands back to the CPU decoder
            workloads["world_variants"] = {"size": dims, "kinds": "gray, progressive, CMYK JPEG, PNG",
                                           **compare_paths(model, variant_jpegs(images), device, repeats)}
    model.engine.close()
    return {
        "kind": "device-preprocess", "command": command, "bundle": str(bundle), "engine": engine,
        "device": device, "model_input": size, "preprocess": model.manifest.preprocess.model_dump(),
        "classes": classes, "seed": seed, "repeats": repeats, "machine": machine_info(), "workloads": workloads,
    }

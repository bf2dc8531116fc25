"""Raw engine throughput: the service's own engine classes, in-process, no HTTP, no batcher."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deltagate.bench.report import LatencyStats, latency_stats
from models.bundle import load_bundle
from models.preprocess import decode_and_preprocess
from service.engines import create_engine
from service.runtime import LoadedModel
from service.settings import DeviceName

__all__ = ["EngineResult", "load_engine", "measure_engine", "measure_preprocess"]

logger = logging.getLogger(__name__)

WARMUP_FORWARDS = 2  # untimed forwards per batch size (first-call allocations, ORT arena growth)


@dataclass(frozen=True)
class EngineResult:
    """Throughput and per-forward latency of one engine at one batch size."""

    engine: str
    device: str
    batch_size: int
    forwards: int
    seconds: float
    images_per_s: float
    latency: LatencyStats  # per forward (one batch)

    def as_row(self) -> dict[str, Any]:
        """Flat dict for tables and JSON."""
        row = {k: v for k, v in asdict(self).items() if k != "latency"}
        row.update({f"batch_{k}": v for k, v in asdict(self.latency).items() if k != "n"})
        return row


def load_engine(bundle_path: Path, engine: str, device: DeviceName = "cpu") -> LoadedModel:
    """Load a bundle and one of the service's engines, as the service's runtime does.

    Unlike the service it does not require a calibrated bundle: the forward's cost does not
    depend on the threshold.
    """
    bundle = load_bundle(bundle_path)
    model = LoadedModel(bundle, create_engine(engine, bundle, device))
    model.engine.load()
    return model


def example_pixels(model: LoadedModel, png: bytes, batch_size: int) -> np.ndarray:
    """The bench image decoded and preprocessed with the bundle's config, repeated to a batch."""
    pixels = decode_and_preprocess(png, model.manifest.preprocess)  # (3, H, W)
    return np.repeat(pixels[None], batch_size, axis=0)  # (B, 3, H, W), writable like the batcher's np.stack


def measure_engine(model: LoadedModel, png: bytes, batch_size: int, seconds: float,
                   warmup: int = WARMUP_FORWARDS) -> EngineResult:
    """Run forwards back to back at one batch size for about ``seconds`` (at least 3 forwards).

    Args:
        model: a loaded engine.
        png: the image to forward (decoded and preprocessed once, outside the timing).
        batch_size: images per forward.
        seconds: time budget after the warm-up forwards.
        warmup: untimed forwards first (fewer when the engine has already run this batch size).

    Returns:
        Throughput in images/s and per-forward latency statistics.
    """
    batch = example_pixels(model, png, batch_size)  # (B, 3, H, W)
    for _ in range(warmup):
        model.infer(batch)
    durations: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(durations) < 3:
        t0 = time.perf_counter()
        model.infer(batch)
        durations.append(time.perf_counter() - t0)
    total = sum(durations)
    result = EngineResult(
        engine=model.engine.name, device=model.engine.device, batch_size=batch_size, forwards=len(durations),
        seconds=round(total, 3), images_per_s=round(batch_size * len(durations) / total, 2),
        latency=latency_stats(durations),
    )
    logger.info("engine %s batch %d: %.2f images/s", result.engine, batch_size, result.images_per_s)
    return result



def measure_preprocess(model: LoadedModel, png: bytes, seconds: float) -> LatencyStats:
    """Decode and preprocess the bench image repeatedly (the service's per-image CPU stage, one thread).

    Args:
        model: supplies the bundle's preprocessing config.
        png: the encoded bench image.
        seconds: time budget (at least 10 repetitions).

    Returns:
        Per-image latency statistics.
    """
    cfg = model.manifest.preprocess
    durations: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or len(durations) < 10:
        t0 = time.perf_counter()
        decode_and_preprocess(png, cfg)  # (3, H, W)
        durations.append(time.perf_counter() - t0)
    return latency_stats(durations)

"""Benchmark: training epochs with cached image features against recomputing them (one run, one machine).

Both arms run the same trainer, data, batch order and schedule; the only difference is
``TrainConfig.cache_features``. The cached arm pays a one-time encoding of the training images
(measured separately) and then runs only the text tower per step; the recomputing arm decodes,
preprocesses and encodes every batch every epoch, as a trainer with augmentation must.
"""

from __future__ import annotations

import logging
import platform
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from models.clip_loading import LoadedClip
from models.train.data.folders import FolderIndex
from models.train.features import torch_threads
from models.train.trainer import PromptTrainer, TrainConfig

__all__ = ["benchmark_feature_cache"]

logger = logging.getLogger(__name__)


def _epoch_seconds(history: list[dict[str, Any]]) -> float:
    secs = [h["seconds"] for h in history]
    return float(sum(secs) / len(secs))


def benchmark_feature_cache(
    clip: LoadedClip, classnames: list[str], train: FolderIndex, cfg: TrainConfig, epochs: int = 3
) -> dict[str, Any]:
    """Time ``epochs`` training epochs with and without the feature cache.

    Args:
        clip: the CLIP.
        classnames: class names.
        train: the training images (as the real run uses them, e.g. few-shot sampled).
        cfg: the training configuration (method, batch size, threads, device are kept).
        epochs: epochs timed per arm (the run's own ``cfg.epochs`` is used for the whole-run estimate).

    Returns:
        Seconds per epoch of both arms, the one-time encoding, their ratio, and the settings.
    """
    run_epochs = cfg.epochs
    cfg = replace(cfg, epochs=epochs, augment=False, method="ebm" if cfg.method == "zero-shot" else cfg.method)
    out: dict[str, Any] = {"epochs": epochs, "train_images": len(train), "config": asdict(cfg)}
    with tempfile.TemporaryDirectory() as tmp, torch_threads(cfg.threads):
        cached = PromptTrainer(clip, classnames, replace(cfg, cache_features=True), Path(tmp) / "cached")
        start = time.perf_counter()
        cached.encode(train)
        out["encode_once_s"] = time.perf_counter() - start
        out["cached_epoch_s"] = _epoch_seconds(cached.fit(train, progress=False).history)
        fresh = PromptTrainer(clip, classnames, replace(cfg, cache_features=False), Path(tmp) / "fresh")
        out["recompute_epoch_s"] = _epoch_seconds(fresh.fit(train, progress=False).history)
    out["speedup_per_epoch"] = out["recompute_epoch_s"] / out["cached_epoch_s"]
    # What a full run of cfg.epochs costs in training time either way (the cache's encoding included).
    out["run_epochs"] = run_epochs
    out["run_cached_s"] = out["encode_once_s"] + run_epochs * out["cached_epoch_s"]
    out["run_recompute_s"] = run_epochs * out["recompute_epoch_s"]
    out["speedup_per_run"] = out["run_recompute_s"] / out["run_cached_s"]
    out["machine"] = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                      "torch_threads": cfg.threads or torch.get_num_threads(), "device": str(cached.device)}
    logger.info("feature cache: %.3f s/epoch cached vs %.3f s/epoch recomputed (x%.1f); encoding once %.2f s; "
                "a %d-epoch run x%.1f", out["cached_epoch_s"], out["recompute_epoch_s"], out["speedup_per_epoch"],
                out["encode_once_s"], run_epochs, out["speedup_per_run"])
    return out

"""Fit a bundle's OOD threshold on ID validation images and write it into the manifest (METHOD.md).

The scores are the bundle's own :class:`~models.scoring_module.ScoringModule` outputs (the module
the service runs and ONNX traces) on images read with the bundle's preprocessing, so the threshold
is valid for exactly what is served.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from models.bundle import load_bundle, update_manifest
from models.calibration import CalibrationRecord
from models.scores import id_score
from models.scoring_module import load_scoring_module
from models.train.data.folders import FolderIndex, ImageFolderDataset, collate_skip_bad

__all__ = ["bundle_scores", "calibrate_bundle"]

logger = logging.getLogger(__name__)


@torch.no_grad()
def bundle_scores(
    bundle_dir: str | Path, index: FolderIndex, score: str = "delta_energy", batch_size: int = 128,
    device: str = "cpu",
) -> np.ndarray:
    """A bundle's ID score (higher = ID) on every readable image of an index.

    Args:
        bundle_dir: the bundle.
        index: the images.
        score: score name (the scoring module's logits through :func:`models.scores.id_score`).
        batch_size: images per forward pass.
        device: where the module runs.

    Returns:
        (N,) float64 scores.
    """
    bundle = load_bundle(bundle_dir)
    module = load_scoring_module(bundle).to(device)
    loader = DataLoader(ImageFolderDataset(index, bundle.manifest.preprocess), batch_size=batch_size,
                        collate_fn=collate_skip_bad)
    out: list[np.ndarray] = []
    for batch in loader:
        if batch is None:
            continue
        logits = module(batch[0].to(device))[0].cpu()  # (b, K)
        out.append(id_score(score, logits, module.logit_scale, module.score_params).numpy())
    if not out:
        raise ValueError(f"{index.root}: no readable images to calibrate on")
    return np.concatenate(out).astype(np.float64)  # (N,)


def calibrate_bundle(
    bundle_dir: str | Path,
    index: FolderIndex,
    *,
    target_tpr: float = 0.95,
    score: str = "delta_energy",
    split_name: str = "id_val",
    batch_size: int = 128,
    device: str = "cpu",
) -> CalibrationRecord:
    """Threshold at ``target_tpr`` of ID validation images, written into the bundle's manifest.

    Args:
        bundle_dir: the bundle (its manifest is updated in place).
        index: held-out ID validation images (never test or OOD data).
        target_tpr: fraction of ID images that must pass.
        score: which score the threshold applies to.
        split_name: recorded as the calibration's ``split``.
        batch_size: images per forward pass.
        device: where the module runs.

    Returns:
        The calibration record.
    """
    scores = bundle_scores(bundle_dir, index, score, batch_size, device)
    record = CalibrationRecord.from_scores(scores, target_tpr=target_tpr, score=score, split=split_name)
    update_manifest(bundle_dir, calibration=record)
    logger.info("calibrated %s: %s >= %.4g passes %.1f%% of %d ID validation images", bundle_dir, score,
                record.threshold, 100 * record.achieved_tpr, record.n)
    return record

"""Metric definitions, one each: top-1 accuracy and the OOD-detection metrics (scikit-learn).

OOD detection follows the CLIP-OOD literature (MCM, CoOp/LoCoOp): ID images are the positive class
and every score is oriented so that higher = more in-distribution. AUPR is AUPR-In.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

__all__ = ["TPR_LEVEL", "correct", "accuracy", "fpr_at_tpr", "auroc", "ood_metrics"]

TPR_LEVEL = 0.95  # FPR is reported at this true-positive rate of ID images


def correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N,) bool: whether the top-1 class of (N, K) logits is the label."""
    return logits.argmax(dim=-1) == labels.to(logits.device)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy of (N, K) logits against (N,) labels; NaN for an empty batch."""
    if not len(labels):
        return float("nan")
    return float(correct(logits, labels).float().mean().item())


def fpr_at_tpr(labels: np.ndarray, scores: np.ndarray, tpr_level: float = TPR_LEVEL) -> float:
    """Smallest false-positive rate among thresholds whose true-positive rate is >= ``tpr_level``.

    Args:
        labels: (N,) 1 = ID (positive), 0 = OOD.
        scores: (N,) higher = more ID.
    """
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return float(fpr[int(np.searchsorted(tpr, tpr_level, side="left"))])


def _stack(id_scores: np.ndarray, ood_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.concatenate([np.ones(len(id_scores)), np.zeros(len(ood_scores))])  # (N + M,)
    scores = np.concatenate([id_scores, ood_scores]).astype(np.float64)  # (N + M,)
    return labels, scores


def auroc(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """AUROC of ID (positive) vs OOD scores."""
    return float(roc_auc_score(*_stack(id_scores, ood_scores)))


def ood_metrics(id_scores: np.ndarray, ood_scores: np.ndarray) -> dict[str, float]:
    """AUROC, FPR@95%TPR and AUPR-In of ID-vs-OOD scores (ID positive, higher score = ID)."""
    labels, scores = _stack(id_scores, ood_scores)
    return {
        "auroc": float(roc_auc_score(labels, scores)),
        "fpr95": fpr_at_tpr(labels, scores),
        "aupr": float(average_precision_score(labels, scores)),
    }

"""The calibration record a bundle carries: the OOD threshold and where it came from.

The threshold is the ``1 - target_tpr`` quantile of ΔEnergy on held-out ID validation images
(METHOD.md), so ``target_tpr`` of ID images pass (``score >= threshold``). A compact quantile
summary of the same scores lets the service report an ``ood_p_value`` for any score, so clients
can choose their own operating point without a second calibration.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["CalibrationRecord"]


class CalibrationRecord(BaseModel):
    """Threshold and the statistics of the ID scores it was fitted on."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    score: str = "delta_energy"  # which score the threshold applies to (higher = ID)
    threshold: float  # flag OOD when score < threshold
    target_tpr: float = Field(0.95, gt=0.0, le=1.0)  # fraction of ID validation images that pass
    split: str = "id_val"  # which data the scores came from
    n: int = Field(gt=0)  # number of ID scores
    mean: float
    std: float
    min: float
    max: float
    achieved_tpr: float  # fraction of the calibration scores >= threshold (≈ target_tpr)
    # quantile_levels[i] is the fraction of calibration scores <= quantile_values[i].
    quantile_levels: list[float]
    quantile_values: list[float]
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @model_validator(mode="after")
    def _check_quantiles(self) -> CalibrationRecord:
        if len(self.quantile_levels) != len(self.quantile_values) or len(self.quantile_levels) < 2:
            raise ValueError("quantile_levels and quantile_values must have the same length (>= 2)")
        if np.any(np.diff(self.quantile_values) < 0) or np.any(np.diff(self.quantile_levels) < 0):
            raise ValueError("quantile summary must be non-decreasing")
        return self

    @classmethod
    def from_scores(
        cls,
        scores: np.ndarray,
        target_tpr: float = 0.95,
        score: str = "delta_energy",
        split: str = "id_val",
        n_quantiles: int = 101,
    ) -> CalibrationRecord:
        """Fit the threshold on ID scores.

        Args:
            scores: (N,) ID scores, higher = ID.
            target_tpr: fraction of ID images that must pass.
            score: name of the score.
            split: name of the data split the scores came from.
            n_quantiles: size of the stored quantile summary (101 = every percentile).

        Returns:
            The record.
        """
        s = np.asarray(scores, dtype=np.float64).ravel()  # (N,)
        if s.size == 0 or not np.all(np.isfinite(s)):
            raise ValueError("calibration needs a non-empty set of finite scores")
        threshold = float(np.quantile(s, 1.0 - target_tpr))
        levels = np.linspace(0.0, 1.0, n_quantiles)  # (Q,)
        values = np.quantile(s, levels)  # (Q,)
        return cls(
            score=score,
            threshold=threshold,
            target_tpr=target_tpr,
            split=split,
            n=int(s.size),
            mean=float(s.mean()),
            std=float(s.std()),
            min=float(s.min()),
            max=float(s.max()),
            achieved_tpr=float((s >= threshold).mean()),
            quantile_levels=levels.tolist(),
            quantile_values=values.tolist(),
        )

    def is_ood(self, scores: np.ndarray) -> np.ndarray:
        """Boolean OOD flags: ``score < threshold``."""
        return np.asarray(scores) < self.threshold

    def p_value(self, scores: np.ndarray) -> np.ndarray:
        """Fraction of ID calibration scores at or below each score (interpolated summary).

        A small value means the score is lower than almost every ID image's: likely OOD.

        Args:
            scores: scores of any shape.

        Returns:
            Array of the same shape, values in [0, 1].
        """
        values = np.asarray(self.quantile_values)
        levels = np.asarray(self.quantile_levels)
        # For tied quantile values keep the largest level ("at or below").
        rev_vals, rev_idx = np.unique(values[::-1], return_index=True)
        top_levels = levels[::-1][rev_idx]
        s = np.asarray(scores, dtype=np.float64)
        p = np.interp(s, rev_vals, top_levels, left=0.0, right=1.0)
        return np.where(s < values[0], 0.0, p)

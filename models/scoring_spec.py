"""The scoring module's interface without torch: its tensor names and its score parameters.

:mod:`models.scoring_module` (the torch module) and :mod:`models.scores` (the score functions)
re-export these names; this module exists so that the bundle manifest and the ONNX engine can be
imported on an ONNX-only install (no torch, no open_clip; see ``docs/operations.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["INPUT_NAME", "OUTPUT_NAMES", "ScoreParams"]

INPUT_NAME = "pixel_values"  # (B, 3, H, W) float32, preprocessed with the bundle's config
OUTPUT_NAMES: tuple[str, str, str, str] = ("logits", "probs", "delta_energy", "energy")


@dataclass(frozen=True)
class ScoreParams:
    """Parameters of the scores; stored in every bundle so serving matches evaluation."""

    top_c: int = 1  # ΔEnergy: how many of the largest logits are reset, one at a time
    reset_logit: float = 0.0  # ΔEnergy: value a removed logit is reset to (cosine "cropped to zero")
    temperature: float = 1.0  # T in E_T(z) = -T * LSE(z / T), for energy and ΔEnergy
    mcm_tau: float = 1.0  # MCM: softmax temperature over cosine similarities (Ming et al., 2022)

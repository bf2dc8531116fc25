"""The scoring module's interface without torch: its tensor names, its score parameters and the gate.

:mod:`models.scoring_module` (the torch module) and :mod:`models.scores` (the score functions)
re-export these names; this module exists so that the bundle manifest and the ONNX engine can be
imported on an ONNX-only install (no torch, no open_clip; see ``docs/operations.md``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["INPUT_NAME", "OUTPUT_NAMES", "FEATURES_NAME", "TEXT_INPUT_NAMES", "TEXT_OUTPUT_NAME",
           "SCORE_INPUT_NAMES", "RESET_MODES", "ResetMode", "ScoreParams", "gate_scores"]

INPUT_NAME = "pixel_values"  # (B, 3, H, W) float32, preprocessed with the bundle's config
OUTPUT_NAMES: tuple[str, str, str, str] = ("logits", "probs", "delta_energy", "energy")
# Bundles with a text side: model.onnx also gives the L2-normalised image features (B, D), so that
# label sets are scored against them (scores.onnx) without a second vision forward.
FEATURES_NAME = "image_features"
# text.onnx: token ids (N, T, L) int64 and use_context (N,) float32 (1: the learned context replaces
# the prompt's placeholder tokens) -> (N, D) L2-normalised text embeddings (mean over the T prompts).
TEXT_INPUT_NAMES: tuple[str, str] = ("input_ids", "use_context")
TEXT_OUTPUT_NAME = "text_embeddings"
# scores.onnx: image features (B, D) and class embeddings (K, D) -> OUTPUT_NAMES (the scoring head).
SCORE_INPUT_NAMES: tuple[str, str] = (FEATURES_NAME, "class_embeddings")


ResetMode = Literal["value", "min", "mean"]
RESET_MODES: tuple[str, ...] = ("value", "min", "mean")


@dataclass(frozen=True)
class ScoreParams:
    """Parameters of the scores (never of the loss); stored in every bundle so serving matches evaluation.

    Each score has its own parameters, selected on its own (``docs/evidence/protocol.md``): ΔEnergy's
    T, c and reset are independent of energy's T and of MCM's τ.
    """

    top_c: int = 1  # ΔEnergy: how many of the largest logits are reset, one at a time
    reset_logit: float = 0.0  # ΔEnergy: the reset value when reset == "value" (0: cosine "cropped to zero")
    temperature: float = 1.0  # ΔEnergy: T in E_T(z) = -T * LSE(z / T)
    reset: ResetMode = "value"  # ΔEnergy: "value" (reset_logit) or the image's own "min" / "mean" logit
    energy_temperature: float = 1.0  # energy score: its own T
    mcm_tau: float = 1.0  # MCM: softmax temperature over cosine similarities (Ming et al., 2022)

    def __post_init__(self) -> None:
        if self.reset not in RESET_MODES:
            raise ValueError(f"unknown ΔEnergy reset {self.reset!r}; valid: {', '.join(RESET_MODES)}")
        if self.temperature <= 0 or self.energy_temperature <= 0 or self.mcm_tau <= 0 or self.top_c < 1:
            raise ValueError("temperatures and mcm_tau must be > 0 and top_c >= 1")


def gate_scores(outputs: Mapping[str, np.ndarray], score: str, logit_scale: float, params: ScoreParams) -> np.ndarray:
    """The gating score (higher = ID) of a batch of module outputs.

    Args:
        outputs: the module's outputs for N images (``logits`` (N, K), ``delta_energy`` (N,), ...).
        score: the gate's score name (the bundle's ``calibration.score``).
        logit_scale: the bundle's logit scale (for MCM).
        params: the bundle's score parameters.

    Returns:
        (N,) float64 scores; ΔEnergy is the graph's own output, other scores are computed from the logits
        with :func:`models.scores.id_score` (imported on first use: it needs torch).
    """
    if score == "delta_energy":
        return np.asarray(outputs["delta_energy"], dtype=np.float64).reshape(-1)  # (N,)
    # Another gate is computed from the logits with the one torch definition of the scores, so it
    # needs the 'torch' extra; the default ΔEnergy gate is the graph's output and needs no torch.
    import torch

    from models.scores import id_score

    logits = torch.from_numpy(np.asarray(outputs["logits"], dtype=np.float32))  # (N, K)
    return id_score(score, logits, logit_scale, params).numpy().astype(np.float64)  # (N,)

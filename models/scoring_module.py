"""The scoring module: pixels -> (logits, probabilities, ΔEnergy, energy).

This one module is what calibration evaluates, what the PyTorch engine runs and what the ONNX
export traces, so the three cannot disagree. It holds the frozen vision tower, the baked
(K, D) class embeddings and the score parameters; the scores come from :mod:`models.scores`.

The gate (the score the OOD threshold applies to) is named by the bundle's calibration: ΔEnergy by
default (an output of the graph), or any other score of :data:`models.scores.SCORE_NAMES`, computed
from the ``logits`` output by :func:`models.scoring_spec.gate_scores` with the bundle's score parameters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from models.errors import BundleError
from models.scores import ScoreParams, cosine_logits, delta_energy, energy
from models.scoring_spec import FEATURES_NAME, INPUT_NAME, OUTPUT_NAMES  # torch-free names, re-exported here

if TYPE_CHECKING:
    from models.bundle import Bundle

__all__ = ["INPUT_NAME", "OUTPUT_NAMES", "FEATURES_NAME", "ScoringModule", "ScoreHead", "score_outputs",
           "load_scoring_module"]


def score_outputs(logits: torch.Tensor, p: ScoreParams) -> tuple[torch.Tensor, ...]:
    """(B, K) logits -> (logits, probs, delta_energy, energy): the scoring module's outputs."""
    probs = torch.softmax(logits, dim=-1)  # (B, K)
    de = delta_energy(logits, p.delta_energy_top_c, p.delta_energy_reset_logit, p.delta_energy_temperature,
                      p.delta_energy_reset)  # (B,)
    en = energy(logits, p.energy_temperature)  # (B,)
    return logits, probs, de, en


class ScoreHead(nn.Module):
    """The scoring head alone: (image features (B, D), class embeddings (K, D)) -> the four outputs.

    Exported as a bundle's ``scores.onnx``: label sets (class embeddings made at request time or
    stored in a label-set file) are scored by this graph, so their scores are the same definition
    (:mod:`models.scores`) as the fixed classes'.
    """

    def __init__(self, logit_scale: float, score_params: ScoreParams | None = None) -> None:
        super().__init__()
        self.logit_scale = float(logit_scale)
        self.score_params = score_params or ScoreParams()

    def forward(self, features: torch.Tensor, class_embeddings: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return score_outputs(cosine_logits(features, class_embeddings, self.logit_scale), self.score_params)


class ScoringModule(nn.Module):
    """Image classifier with OOD scores in one forward pass.

    Args:
        visual: the open_clip vision tower (pixels -> (B, D) features).
        class_embeddings: (K, D) L2-normalised class embeddings (zero-shot or baked prompts).
        logit_scale: the multiplier of cosine similarities (``exp`` of CLIP's ``logit_scale``).
        score_params: ΔEnergy / energy parameters.
    """

    class_embeddings: torch.Tensor  # (K, D) buffer

    def __init__(
        self,
        visual: nn.Module,
        class_embeddings: torch.Tensor,
        logit_scale: float,
        score_params: ScoreParams | None = None,
    ) -> None:
        super().__init__()
        self.visual = visual
        self.register_buffer("class_embeddings", F.normalize(class_embeddings.detach().float(), dim=-1))
        self.logit_scale = float(logit_scale)
        self.score_params = score_params or ScoreParams()
        # True: forward also returns the L2-normalised image features (B, D) as a fifth output, what a bundle
        # with a text side exports as model.onnx's FEATURES_NAME and its torch engine runs (label sets are
        # scored from them); the four fixed-class outputs are the same either way.
        self.features_output = False

    @property
    def num_classes(self) -> int:
        return int(self.class_embeddings.shape[0])

    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """(B, D) image features -> (B, K) logits (cosine similarity times the logit scale)."""
        return cosine_logits(features, self.class_embeddings, self.logit_scale)  # (B, K)

    def scores_from_logits(self, logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, K) logits -> (logits, probs, delta_energy, energy), the module's outputs."""
        return score_outputs(logits, self.score_params)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Args: pixel_values (B, 3, H, W) normalised. Returns: logits (B, K), probs (B, K),
        delta_energy (B,), energy (B,), all float32; and image_features (B, D) with ``features_output``."""
        features = self.visual(pixel_values)  # (B, D)
        outputs = self.scores_from_logits(self.logits_from_features(features))
        return (*outputs, F.normalize(features.float(), dim=-1)) if self.features_output else outputs



def load_scoring_module(bundle: Bundle) -> ScoringModule:
    """The scoring module of a bundle, with its weights: float32, CPU, eval mode.

    Raises:
        BundleError: the weights file cannot be read or does not match the manifest's architecture.
    """
    from safetensors.torch import load_file

    from models.clip_loading import build_vision_tower  # open_clip: only when a torch module is built

    m = bundle.manifest
    visual = build_vision_tower(m.architecture.open_clip_config)
    module = ScoringModule(visual, torch.zeros(len(m.classes), m.architecture.open_clip_config["embed_dim"]),
                           m.logit_scale, m.scores)
    try:
        state = load_file(str(bundle.weights_path))
    except Exception as exc:  # safetensors raises several error types for a damaged file
        raise BundleError(f"{bundle.weights_path}: cannot read weights: {exc}") from exc
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BundleError(f"{bundle.weights_path}: weights do not match the manifest's architecture: {exc}") from exc
    return module.eval()


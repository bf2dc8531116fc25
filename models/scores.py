"""OOD scores as pure functions of logits (see ``docs/METHOD.md``).

Every function takes a batch of logits ``z`` of shape (B, K) (or cosine similarities for
:func:`mcm`) and returns one score per image, shape (B,). No model calls, no device moves: the
training loss, the evaluation, the exported ONNX graph and the service all call these same
functions, so a score cannot drift between them.

Internally every score is computed in float32 (inputs in float16/bfloat16 are upcast), because
differences of log-sum-exps at CLIP's logit scale of 100 lose all precision in half precision.
Results are float32.

Sign conventions:
    * ``msp``, ``max_logit``, ``mcm``, ``delta_energy``: higher = more in-distribution.
    * ``energy``: the energy itself, lower = more in-distribution. Use :func:`id_score` (which
      negates it) wherever "higher = ID" is needed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from models.scoring_spec import RESET_MODES, ResetMode, ScoreParams  # defined without torch, for ONNX-only serving

__all__ = [
    "ScoreParams",
    "SCORE_NAMES",
    "RESET_MODES",
    "cosine_logits",
    "msp",
    "max_logit",
    "energy",
    "mcm",
    "delta_energy",
    "id_score",
]


def cosine_logits(
    features: torch.Tensor, class_embeddings: torch.Tensor, logit_scale: float | torch.Tensor
) -> torch.Tensor:
    """CLIP's logits: ``scale * normalize(f) @ t.T`` (the one definition; ``t`` is already L2-normalised).

    Args:
        features: (B, D) image features (normalised here; idempotent for normalised ones).
        class_embeddings: (K, D) L2-normalised class embeddings.
        logit_scale: multiplier of the cosine similarities (``exp`` of CLIP's ``logit_scale``).

    Returns:
        (B, K) float32 logits.
    """
    f = F.normalize(_f32(features), dim=-1)  # (B, D)
    return logit_scale * f @ _f32(class_embeddings).t()  # (B, K)


def _f32(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype != torch.float32 else x


def msp(logits: torch.Tensor) -> torch.Tensor:
    """Maximum softmax probability: ``max_k softmax(z)_k``. Higher = ID.

    Args:
        logits: (B, K) logits.

    Returns:
        (B,) scores in (0, 1].
    """
    return torch.softmax(_f32(logits), dim=-1).amax(dim=-1)


def max_logit(logits: torch.Tensor) -> torch.Tensor:
    """Maximum logit: ``max_k z_k``. Higher = ID.

    Args:
        logits: (B, K) logits.

    Returns:
        (B,) scores.
    """
    return _f32(logits).amax(dim=-1)


def energy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Free energy ``E_T(z) = -T * logsumexp(z / T)``. LOWER = ID (use ``-energy`` as an ID score).

    Args:
        logits: (B, K) logits.
        temperature: T > 0.

    Returns:
        (B,) energies.
    """
    return -temperature * torch.logsumexp(_f32(logits) / temperature, dim=-1)


def mcm(similarities: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Maximum Concept Matching: ``max_k softmax(s / tau)_k`` over cosine similarities. Higher = ID.

    Args:
        similarities: (B, K) cosine similarities (logits divided by the logit scale).
        tau: softmax temperature.

    Returns:
        (B,) scores in (0, 1].
    """
    return torch.softmax(_f32(similarities) / tau, dim=-1).amax(dim=-1)


def delta_energy(
    logits: torch.Tensor,
    top_c: int = 1,
    reset_logit: float = 0.0,
    temperature: float = 1.0,
    reset: ResetMode = "value",
) -> torch.Tensor:
    """ΔEnergy: the energy rise when each of the ``c`` best matches is reset, one at a time.

    ``ΔE_c(z) = Σ_{j=1..c} [E_T(z^(j)) - E_T(z)] = T * Σ_j [LSE(z/T) - LSE(z^(j)/T)]`` where
    ``z^(j)`` is ``z`` with its j-th largest entry replaced by the reset logit ``r``: ``reset_logit``
    (``reset="value"``), or the image's own minimum (``"min"``) or mean (``"mean"``) logit. Higher = ID;
    it is >= 0 whenever ``r`` is below the replaced logits. ``LSE(z^(j))`` is computed on the edited
    vector itself (never as ``log(1 - p)``, which underflows at CLIP's scale).

    Args:
        logits: (B, K) logits.
        top_c: number of largest logits to reset (clamped to K).
        reset_logit: value that replaces a removed logit (``reset="value"``).
        temperature: T > 0.
        reset: where the reset value comes from (see above).

    Returns:
        (B,) ΔEnergy scores, float32.
    """
    z = _f32(logits) / temperature  # (B, K)
    num_classes = z.shape[-1]
    c = max(1, min(int(top_c), num_classes))
    top_idx = z.topk(c, dim=-1).indices  # (B, c)
    classes = torch.arange(num_classes, device=z.device)  # (K,)
    removed = top_idx.unsqueeze(-1) == classes  # (B, c, K): one True per (b, j)
    if reset == "min":
        r = z.amin(dim=-1, keepdim=True)  # (B, 1), already divided by T
    elif reset == "mean":
        r = z.mean(dim=-1, keepdim=True)  # (B, 1)
    else:
        r = torch.full_like(z[:, :1], reset_logit / temperature)  # (B, 1)
    reset_row = r.expand_as(z).unsqueeze(1)  # (B, 1, K)
    edited = torch.where(removed, reset_row, z.unsqueeze(1))  # (B, c, K)
    lse_full = torch.logsumexp(z, dim=-1, keepdim=True)  # (B, 1)
    lse_edited = torch.logsumexp(edited, dim=-1)  # (B, c)
    return temperature * (lse_full - lse_edited).sum(dim=-1)  # (B,)


# Registry of ID scores (higher = more in-distribution), each f(logits, logit_scale, params).
_ID_SCORES: dict[str, Callable[[torch.Tensor, float, ScoreParams], torch.Tensor]] = {
    "msp": lambda z, scale, p: msp(z),
    "max_logit": lambda z, scale, p: max_logit(z),
    "energy": lambda z, scale, p: -energy(z, p.energy_temperature),
    "mcm": lambda z, scale, p: mcm(_f32(z) / scale, p.mcm_tau),
    "delta_energy": lambda z, scale, p: delta_energy(z, p.delta_energy_top_c, p.delta_energy_reset_logit,
                                                  p.delta_energy_temperature, p.delta_energy_reset),
}
SCORE_NAMES: tuple[str, ...] = tuple(_ID_SCORES)


def id_score(
    name: str, logits: torch.Tensor, logit_scale: float, params: ScoreParams | None = None
) -> torch.Tensor:
    """Any registered score oriented so that higher = more in-distribution.

    Args:
        name: one of :data:`SCORE_NAMES`.
        logits: (B, K) logits (cosine similarities times ``logit_scale``).
        logit_scale: the model's ``exp(logit_scale)``, to recover similarities for ``mcm``.
        params: score parameters; defaults to :class:`ScoreParams`.

    Returns:
        (B,) float32 scores.

    Raises:
        KeyError: unknown name (the message lists the valid ones).
    """
    if name not in _ID_SCORES:
        raise KeyError(f"unknown score {name!r}; valid scores: {', '.join(SCORE_NAMES)}")
    return _ID_SCORES[name](logits, logit_scale, params or ScoreParams())

"""The EBM training objective: cross-entropy minus λ times a lower bound of ΔEnergy (METHOD.md).

Steps of METHOD.md, "EBM: lower-bound maximization of ΔEnergy":

1. product features ``P_k = f ⊙ t_k`` (their sum over D is the cosine ``s_k``);
2. for the label ``y`` (or ``argmax z`` without labels) a mask zeroes the ``mask_ratio`` fraction
   of dimensions with the largest ``P_y``;
3. masked similarity ``s̃ = Σ_d m_d P_{y,d}``; edited logits ``z̃`` = ``z`` with ``z[y] = s̃ * scale``;
4. ``ΔE_lb = E_T(z̃) - E_T(z)``, computed with :func:`models.scores.energy` (the one definition of
   energy shared with evaluation, export and the service);
5. ``L = CE(z_ce, y) - λ · mean(ΔE_lb)`` with ``z_ce = z̃`` (``ce_on="edited"``) or ``z``
   (``ce_on="original"``).

``top_c > 1`` extends step 2-4 the way ΔEnergy_c extends ΔEnergy_1: the label and the ``c - 1``
largest other logits are each replaced, one at a time, by their own masked similarity, and the
``c`` energy changes are summed. With ``c = 1`` this is exactly the specification above.

Number of masked dimensions: ``round(mask_ratio * D)`` (Python's round, half to even), at least 0
and at most ``D``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from models.scores import cosine_logits, energy

__all__ = ["CeOn", "EbmTerms", "num_masked", "masked_similarity", "ebm_lower_bound", "ebm_loss"]

CeOn = Literal["edited", "original"]


@dataclass
class EbmTerms:
    """The pieces of the EBM objective for one batch."""

    logits: torch.Tensor  # (B, K) original logits z
    edited_logits: torch.Tensor  # (B, K) z̃: z with the first target class (label) reset to its masked value
    delta_e_lb: torch.Tensor  # (B,) ΔE_lb, summed over the c targets
    targets: torch.Tensor  # (B, c) the class indices that were reset (label first)


def num_masked(dim: int, mask_ratio: float) -> int:
    """How many of ``dim`` dimensions the mask zeroes: ``round(mask_ratio * dim)``, clamped to [0, dim]."""
    if not 0.0 <= mask_ratio <= 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1], got {mask_ratio}")
    return max(0, min(dim, round(mask_ratio * dim)))


def masked_similarity(
    features: torch.Tensor, class_embeddings: torch.Tensor, targets: torch.Tensor, mask_ratio: float
) -> torch.Tensor:
    """Cosine similarity with the most-aligned dimensions removed (METHOD.md steps 1-3).

    Args:
        features: (B, D) L2-normalised image features ``f``.
        class_embeddings: (K, D) L2-normalised class embeddings ``t``.
        targets: (B, c) class index per image and target.
        mask_ratio: fraction of the D dimensions zeroed: those with the largest ``P = f ⊙ t``.

    Returns:
        (B, c) masked similarities ``s̃``.
    """
    products = features.unsqueeze(1) * class_embeddings[targets]  # (B, c, D)
    n = num_masked(products.shape[-1], mask_ratio)
    if n == 0:
        return products.sum(dim=-1)  # (B, c)
    top = products.topk(n, dim=-1).indices  # (B, c, n)
    keep = torch.ones_like(products).scatter(-1, top, 0.0)  # (B, c, D): 0 on the n largest products
    return (products * keep).sum(dim=-1)  # (B, c)


def _targets(logits: torch.Tensor, labels: torch.Tensor | None, top_c: int) -> torch.Tensor:
    """(B, c) indices: the label (or argmax) first, then the c - 1 largest other logits."""
    num_classes = logits.shape[-1]
    c = max(1, min(int(top_c), num_classes))
    first = labels if labels is not None else logits.argmax(dim=-1)  # (B,)
    first = first.unsqueeze(-1)  # (B, 1)
    if c == 1:
        return first
    others = logits.detach().scatter(-1, first, float("-inf"))  # (B, K): the first target excluded
    return torch.cat([first, others.topk(c - 1, dim=-1).indices], dim=-1)  # (B, c)


def ebm_lower_bound(
    features: torch.Tensor,
    class_embeddings: torch.Tensor,
    logit_scale: float | torch.Tensor,
    labels: torch.Tensor | None = None,
    mask_ratio: float = 0.1,
    top_c: int = 1,
    temperature: float = 1.0,
) -> EbmTerms:
    """ΔE_lb: the energy change of resetting each target logit to its masked value (steps 1-4).

    Args:
        features: (B, D) L2-normalised image features.
        class_embeddings: (K, D) L2-normalised class embeddings.
        logit_scale: the multiplier of cosine similarities (``exp`` of CLIP's ``logit_scale``).
        labels: (B,) labels (training); None uses ``argmax z`` (inference-time bound).
        mask_ratio: fraction of dimensions masked per target.
        top_c: number of targets (label first, then the largest other logits).
        temperature: T of the energy.

    Returns:
        The logits, the edited logits of the first target, ΔE_lb (B,) and the targets.
    """
    f, t = features.float(), class_embeddings.float()
    logits = cosine_logits(f, t, logit_scale)  # (B, K)
    targets = _targets(logits, labels, top_c)  # (B, c)
    s_tilde = masked_similarity(f, t, targets, mask_ratio)  # (B, c)
    c = targets.shape[1]
    one_hot = F.one_hot(targets, logits.shape[-1]).bool()  # (B, c, K)
    replaced = (logit_scale * s_tilde).unsqueeze(-1)  # (B, c, 1)
    edited = torch.where(one_hot, replaced, logits.unsqueeze(1).expand(-1, c, -1))  # (B, c, K)
    e_full = energy(logits, temperature).unsqueeze(1)  # (B, 1)
    e_edited = energy(edited, temperature)  # (B, c)
    return EbmTerms(logits, edited[:, 0], (e_edited - e_full).sum(dim=-1), targets)


def ebm_loss(
    features: torch.Tensor,
    class_embeddings: torch.Tensor,
    labels: torch.Tensor,
    logit_scale: float | torch.Tensor,
    *,
    ebm_weight: float = 1.0,
    mask_ratio: float = 0.1,
    top_c: int = 1,
    temperature: float = 1.0,
    ce_on: CeOn = "edited",
) -> tuple[torch.Tensor, EbmTerms]:
    """``L = CE(z_ce, y) - λ · mean(ΔE_lb)`` (step 5).

    ``ebm_weight=0`` with ``ce_on="original"`` is plain CoOp cross-entropy.

    Args:
        features: (B, D) L2-normalised image features.
        class_embeddings: (K, D) L2-normalised class embeddings (differentiable w.r.t. the prompts).
        labels: (B,) class labels.
        logit_scale: the multiplier of cosine similarities.
        ebm_weight: λ.
        mask_ratio: fraction of dimensions masked.
        top_c: number of reset targets.
        temperature: T of the energy.
        ce_on: which logits the cross-entropy sees: ``"edited"`` (z̃) or ``"original"`` (z).

    Returns:
        The scalar loss and the terms it was built from.
    """
    if ce_on not in ("edited", "original"):
        raise ValueError(f"ce_on must be 'edited' or 'original', got {ce_on!r}")
    terms = ebm_lower_bound(features, class_embeddings, logit_scale, labels, mask_ratio, top_c, temperature)
    z_ce = terms.edited_logits if ce_on == "edited" else terms.logits
    loss = F.cross_entropy(z_ce, labels)
    if ebm_weight:
        loss = loss - ebm_weight * terms.delta_e_lb.mean()
    return loss, terms

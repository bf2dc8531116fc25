"""The guard against a useless model: did it learn the classes, and can its gate separate anything?

A model can train, calibrate, evaluate and serve without error and still be useless: random CLIP
weights, or a CLIP that has never seen images like the user's, give chance accuracy, and a
calibrated threshold then accepts everything. These checks say so plainly. ``deltagate train``
runs them on ID validation, ``deltagate evaluate`` on ID test and the OOD sets, and
``deltagate serve`` at start from what the bundle records (:func:`bundle_checks`).

The thresholds (docs/offline.md, "The guard against a useless model"):

* **Accuracy near chance** when the *skill* ``(accuracy - 1/K) / (1 - 1/K)`` is below
  :data:`MIN_SKILL` (0.1: the model avoids fewer than one in ten of the errors guessing makes),
  or when a one-sided exact binomial test cannot tell the accuracy from guessing at level
  :data:`MAX_CHANCE_P` (0.01: a model that guesses passes the check 1% of the time).
* **The gate cannot separate anything** when, on every OOD set, the gate score's AUROC (ID
  positive) is below :data:`MIN_GATE_AUROC` (0.6: an OOD image scores below an ID image in
  fewer than 6 pairs of 10) or not above 0.5 at level :data:`MAX_CHANCE_P` (one-sided
  Mann-Whitney test, normal approximation).

Plain Python (math only), so the service can run :func:`bundle_checks` on an ONNX-only install.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from models.bundle import BundleManifest

__all__ = [
    "MIN_SKILL",
    "MAX_CHANCE_P",
    "MIN_GATE_AUROC",
    "Check",
    "ValidationRecord",
    "binomial_p_above_chance",
    "auroc_p_above_half",
    "weights_check",
    "accuracy_check",
    "gate_check",
    "evaluation_checks",
    "bundle_checks",
]

MIN_SKILL = 0.1
MAX_CHANCE_P = 0.01
MIN_GATE_AUROC = 0.6


class ValidationRecord(BaseModel):
    """The trained prompts' accuracy on ID validation images (``deltagate train``; a bundle's ``validation``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    accuracy: float = Field(ge=0.0, le=1.0)
    images: int = Field(ge=0)
    split: str = "id_val"


@dataclass(frozen=True)
class Check:
    """One finding of the guard: ``ok`` False is a warning the user must see."""

    name: str  # "weights", "accuracy" or "gate"
    ok: bool
    message: str


def binomial_p_above_chance(correct: int, n: int, chance: float) -> float:
    """One-sided exact binomial p-value of ``correct`` or more right answers out of ``n`` when guessing.

    Summed in log space (``lgamma``), so large ``n`` does not underflow; scipy's ``binomtest`` gives
    the same number, but the service must compute it without scipy.
    """
    if n <= 0:
        return 1.0
    if chance <= 0.0:
        return 0.0 if correct > 0 else 1.0
    if chance >= 1.0:
        return 1.0
    log_p, log_q = math.log(chance), math.log1p(-chance)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
             for i in range(max(correct, 0), n + 1)]
    if not terms:
        return 0.0
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def auroc_p_above_half(auroc: float, n_id: int, n_ood: int) -> float:
    """One-sided p-value of an AUROC this high when the two samples come from one distribution.

    The Mann-Whitney U statistic's normal approximation (no tie correction): under the null the
    AUROC has mean 0.5 and variance ``(n_id + n_ood + 1) / (12 n_id n_ood)``.
    """
    if n_id <= 0 or n_ood <= 0:
        return 1.0
    se = math.sqrt((n_id + n_ood + 1) / (12.0 * n_id * n_ood))
    return 0.5 * math.erfc((auroc - 0.5) / se / math.sqrt(2.0))


def weights_check(pretrained: str | None) -> Check:
    """Random weights (``--pretrained none``) can learn nothing from images: always a warning."""
    if pretrained is None:
        return Check("weights", False, "the CLIP has random weights (--pretrained none): it has learned nothing "
                                       "about images, so its answers are guesses; use a pretrained tag or a checkpoint")
    return Check("weights", True, f"CLIP weights: {pretrained}")


def accuracy_check(accuracy: float, n: int, num_classes: int, split: str = "validation") -> Check:
    """Whether an accuracy on ``n`` labelled images of ``num_classes`` classes is near chance (module docstring)."""
    chance = 1.0 / max(num_classes, 1)
    skill = (accuracy - chance) / (1.0 - chance) if num_classes > 1 else 0.0
    p = binomial_p_above_chance(round(accuracy * n), n, chance)
    facts = f"{split} accuracy {accuracy:.3f} on {n} images (chance {chance:.3f} for {num_classes} classes)"
    if skill < MIN_SKILL:
        return Check("accuracy", False, f"{facts} is near chance: the model has not learned these classes")
    if p > MAX_CHANCE_P:
        return Check("accuracy", False, f"{facts} cannot be told from guessing (binomial p = {p:.2g} > "
                                        f"{MAX_CHANCE_P}): too few images to show the model learned anything")
    return Check("accuracy", True, f"{facts}: above chance")


def gate_check(aurocs: Mapping[str, float], n_id: int, n_ood: Mapping[str, int], score: str) -> Check | None:
    """Whether the gate separates ID test images from at least one OOD set (module docstring); None: no OOD set."""
    if not aurocs:
        return None
    separated = {k: a for k, a in aurocs.items()
                 if a >= MIN_GATE_AUROC and auroc_p_above_half(a, n_id, n_ood.get(k, 0)) <= MAX_CHANCE_P}
    shown = ", ".join(f"{k} {a:.3f}" for k, a in aurocs.items())
    if not separated:
        return Check("gate", False, f"the gate ({score}) cannot separate anything: its AUROC is {shown} "
                                    f"(below {MIN_GATE_AUROC} or not above 0.5 beyond chance on every OOD set); "
                                    "it will accept OOD images as readily as ID ones")
    return Check("gate", True, f"gate ({score}) AUROC {shown}")


def evaluation_checks(summary: Mapping[str, Any], num_classes: int, gate: str) -> list[Check]:
    """The accuracy and gate checks of an evaluation summary (``deltagate evaluate``; a bundle's ``evaluation``)."""
    counts = summary.get("counts", {})
    checks = []
    if "id_accuracy" in summary and counts.get("id_test"):
        checks.append(accuracy_check(float(summary["id_accuracy"]), int(counts["id_test"]), num_classes, "ID test"))
    sets = summary.get("scores", {}).get(gate, {}).get("ood", {})
    aurocs = {k: float(v["auroc"]) for k, v in sets.items() if v.get("auroc") is not None}
    gc = gate_check(aurocs, int(counts.get("id_test", 0)), {k: int(counts.get(f"ood/{k}", 0)) for k in aurocs}, gate)
    return checks + ([gc] if gc is not None else [])


def bundle_checks(manifest: BundleManifest) -> list[Check]:
    """Every check a bundle's own records allow: its weights, its validation accuracy (``deltagate train``)
    and its evaluation (``deltagate evaluate``). ``deltagate serve`` logs them at start."""
    checks = [weights_check(manifest.architecture.pretrained)]
    k = len(manifest.classes)
    if manifest.validation is not None and manifest.validation.images > 0:
        checks.append(accuracy_check(manifest.validation.accuracy, manifest.validation.images, k, "validation"))
    if manifest.evaluation:
        gate = manifest.calibration.score if manifest.calibration is not None else "delta_energy"
        checks += evaluation_checks(manifest.evaluation, k, gate)
    return checks

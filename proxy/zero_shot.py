"""Zero-shot evaluation of a CLIP on a task: ID accuracy, covariate-shift accuracy, OOD AUROC, linear probe.

Used to judge a pretrained tiny CLIP before any prompt tuning: zero-shot accuracy with hand-written
prompts is the starting point of CoOp/EBM, and the linear-probe accuracy of the frozen image
features (logistic regression on ID train, regularisation chosen on ID val) is a ceiling for what
prompt tuning can reach. OOD scores come from :mod:`models.scores` (the one definition shared with
training, export and serving); ID images are the positive class.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from models.clip_loading import LoadedClip
from models.prompt_learner import DEFAULT_TEMPLATES, zero_shot_class_embeddings
from models.scores import ScoreParams, cosine_logits, id_score
from models.train.data.folders import FolderIndex, TaskData
from models.train.features import encode_index
from models.train.metrics import accuracy, ood_metrics

__all__ = ["ZeroShotReport", "linear_probe", "evaluate_zero_shot"]

logger = logging.getLogger(__name__)

DEFAULT_SCORES: tuple[str, ...] = ("msp", "max_logit", "energy", "mcm", "delta_energy")


@dataclass
class ZeroShotReport:
    """Zero-shot numbers of one model on one task."""

    templates: list[str]  # prompt templates (class embeddings are averaged over them)
    classes: list[str]  # class display names, label order
    id_accuracy: float  # top-1 on ID test
    covariate_accuracy: dict[str, float] = field(default_factory=dict)  # per covariate-shift set
    auroc: dict[str, dict[str, float]] = field(default_factory=dict)  # score -> OOD set -> AUROC (ID positive)
    fpr95: dict[str, dict[str, float]] = field(default_factory=dict)  # score -> OOD set -> FPR at 95% TPR
    linear_probe_accuracy: float | None = None  # logistic regression on frozen features, ID test
    linear_probe_c: float | None = None  # regularisation chosen on ID val
    counts: dict[str, int] = field(default_factory=dict)  # images evaluated per split / set

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def linear_probe(
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray] | None,
    test: tuple[np.ndarray, np.ndarray],
    cs: Sequence[float] = (0.1, 1.0, 10.0, 100.0),
) -> tuple[float, float]:
    """Logistic regression on frozen features; C chosen on val (or the largest C without val).

    Returns:
        (test accuracy, chosen C).
    """
    from sklearn.linear_model import LogisticRegression

    best_c, best_acc = cs[-1], -1.0
    if val is not None and len(val[1]):
        for c in cs:
            clf = LogisticRegression(C=c, max_iter=2000).fit(*train)
            acc = float(clf.score(*val))
            if acc > best_acc:
                best_c, best_acc = c, acc
    clf = LogisticRegression(C=best_c, max_iter=2000).fit(*train)
    return float(clf.score(*test)), best_c


def _features(clip: LoadedClip, index: FolderIndex, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    model: Any = clip.model
    device = next(model.parameters()).device
    enc = encode_index(model.visual, index, clip.preprocess, device=device, batch_size=batch_size)
    return enc.features, enc.labels  # (N, D) L2-normalised, (N,)


def evaluate_zero_shot(
    clip: LoadedClip,
    task: TaskData,
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    scores: Sequence[str] = DEFAULT_SCORES,
    score_params: ScoreParams | None = None,
    probe: bool = True,
    batch_size: int = 256,
) -> ZeroShotReport:
    """Zero-shot accuracy, covariate-shift accuracy, OOD detection and the linear-probe ceiling.

    Args:
        clip: the model (left in eval mode).
        task: the task's indexes (ID test is required).
        templates: prompt templates with one ``{}`` for the class name.
        scores: names of :data:`models.scores.SCORE_NAMES` to evaluate on every OOD set.
        score_params: parameters of the scores (ΔEnergy's ``top_c`` etc.).
        probe: also fit the linear probe (needs ID train).
        batch_size: images per forward pass.

    Returns:
        The report.

    Raises:
        ValueError: the task has no ID test split.
    """
    if task.test is None:
        raise ValueError("zero-shot evaluation needs an ID test split")
    model: Any = clip.model.eval()
    classes = list(task.class_names)
    text = zero_shot_class_embeddings(model, clip.tokenizer, classes, templates).cpu()  # (K, D)
    scale = float(model.logit_scale.detach().exp())
    test_f, test_y = _features(clip, task.test, batch_size)
    test_logits = cosine_logits(test_f, text, scale)  # (N, K)
    report = ZeroShotReport(list(templates), classes, accuracy(test_logits, test_y))
    report.counts["id/test"] = len(test_y)
    for name, index in task.covariate.items():
        f, y = _features(clip, index, batch_size)
        report.covariate_accuracy[name] = accuracy(cosine_logits(f, text, scale), y)
        report.counts[f"covariate/{name}"] = len(y)
    id_s = {s: id_score(s, test_logits, scale, score_params).numpy() for s in scores}
    for name, index in task.ood.items():
        f, _ = _features(clip, index, batch_size)
        logits = cosine_logits(f, text, scale)  # (M, K)
        report.counts[f"ood/{name}"] = len(f)
        for s in scores:
            ood_s = id_score(s, logits, scale, score_params).numpy()
            metrics = ood_metrics(id_s[s], ood_s)  # the evaluation's own metric definitions
            report.auroc.setdefault(s, {})[name] = metrics["auroc"]
            report.fpr95.setdefault(s, {})[name] = metrics["fpr95"]
    if probe and len(task.train):
        train_f, train_y = _features(clip, task.train, batch_size)
        val = _features(clip, task.val, batch_size) if task.val is not None else None
        acc, c = linear_probe(
            (train_f.numpy(), train_y.numpy()),
            (val[0].numpy(), val[1].numpy()) if val is not None else None,
            (test_f.numpy(), test_y.numpy()),
        )
        report.linear_probe_accuracy, report.linear_probe_c = acc, c
    logger.info(
        "zero-shot: ID acc %.3f, linear probe %s, covariate %s, AUROC(energy) %s",
        report.id_accuracy, report.linear_probe_accuracy, report.covariate_accuracy, report.auroc.get("energy"),
    )
    return report

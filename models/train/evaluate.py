"""Evaluation protocol of METHOD.md: ID accuracy, covariate-shift accuracy, OOD detection per set.

For every method (a bundle: zero-shot, CoOp, EBM) and every score of :data:`models.scores.SCORE_NAMES`
(ΔEnergy with the bundle's c): AUROC, FPR at 95% TPR and AUPR per OOD set, with ID test images as
the positive class, from scikit-learn (``roc_auc_score``, ``roc_curve``, ``average_precision_score``;
AUPR is AUPR-In, ID positive), and per OOD sub-folder (near-OOD category). At the bundle's own
calibrated threshold (its gate): the ID pass rate and the OOD rejection rate per set, per ID class and
per OOD sub-folder. At *each score's own* threshold (fitted the same way, on ID val): the ID test pass
rate and the rejection rate per OOD set, so a user can compare gates on their own data.

Score parameters are the bundle's (each score its own: ΔEnergy's T, c, reset; energy's T; MCM's τ);
METHOD.md's defaults are always shown beside them. With a user's OOD *validation* set (``ood_val``),
each score's parameters are selected on it by the 1-SE rule (:mod:`models.train.selection`) first;
the test sets are never used to select.

Logits come from the bundle's :class:`~models.scoring_module.ScoringModule` (the module the service
runs) on images read with the bundle's preprocessing; scores from :func:`models.scores.id_score`.
Image features are cached per vision tower, so bundles sharing a frozen tower (zero-shot, CoOp and
EBM of one CLIP) encode each image once.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.bundle import Bundle, load_bundle, update_manifest
from models.calibration import CalibrationRecord
from models.errors import DataError
from models.scores import SCORE_NAMES, ScoreParams, id_score
from models.scoring_module import ScoringModule, load_scoring_module
from models.scoring_spec import score_param_fields
from models.train.data.folders import FolderIndex, TaskData
from models.train.features import FeatureCache
from models.train.metrics import TPR_LEVEL, accuracy, fpr_at_tpr, ood_metrics
from models.train.selection import merge_selected, select_on_ood_val

__all__ = [
    "TPR_LEVEL",
    "SplitLogits",
    "MethodEval",
    "ood_metrics",
    "fpr_at_tpr",
    "score_variants",
    "score_arrays",
    "evaluate_logits",
    "task_logits",
    "evaluate_bundles",
]

logger = logging.getLogger(__name__)



@dataclass
class SplitLogits:
    """Logits of one model on every split of a task."""

    id_test: torch.Tensor  # (N, K) ID test logits
    id_labels: torch.Tensor  # (N,)
    ood: dict[str, torch.Tensor]  # set name -> (M, K)
    covariate: dict[str, tuple[torch.Tensor, torch.Tensor]]  # style -> ((C, K) logits, (C,) labels)
    ood_groups: dict[str, list[str]] = field(default_factory=dict)  # set -> sub-folder per image ("" when flat)
    id_val: torch.Tensor | None = None  # (V, K) ID val logits: each score's own threshold is fitted on them


@dataclass
class MethodEval:
    """One method's evaluation: the JSON summary and the raw scores behind it (for plots)."""

    summary: dict[str, Any]
    id_scores: dict[str, np.ndarray]  # score -> (N,) on ID test
    ood_scores: dict[str, dict[str, np.ndarray]]  # score -> set -> (M,)
    classes: list[str]
    threshold: float | None
    threshold_score: str


ScoreVariant = tuple[str, str, ScoreParams]  # (key in the results, score name, its parameters)


def score_variants(params: ScoreParams, names: Sequence[str] = SCORE_NAMES) -> list[ScoreVariant]:
    """The scores of a table: each name with the bundle's parameters, plus METHOD.md's default row
    (keys ``energy@T=1``, ``mcm@tau=1``, ``delta_energy@c=1,T=1``) of every score whose parameters differ,
    so a changed temperature, c or reset is always shown beside the specification's default."""
    out: list[ScoreVariant] = [(n, n, params) for n in names]
    default = ScoreParams()
    for key, name in (("energy@T=1", "energy"), ("mcm@tau=1", "mcm"), ("delta_energy@c=1,T=1", "delta_energy")):
        if name in names and any(getattr(params, f) != getattr(default, f) for f in score_param_fields(name)):
            out.append((key, name, default))
    return out


def score_arrays(logits: torch.Tensor, logit_scale: float, variants: Sequence[ScoreVariant]) -> dict[str, np.ndarray]:
    """Every ID score variant (higher = ID) of a batch of logits, as NumPy arrays keyed like the variants."""
    return {key: id_score(name, logits, logit_scale, p).numpy() for key, name, p in variants}


def _rates_by_group(flags: np.ndarray, groups: Sequence[str]) -> dict[str, float]:
    keys = sorted(set(groups))
    g = np.asarray(groups)
    return {k: float(flags[g == k].mean()) for k in keys}


def _threshold_summary(
    calibration: CalibrationRecord, id_s: np.ndarray, ood_s: Mapping[str, np.ndarray], split: SplitLogits,
    classes: Sequence[str],
) -> dict[str, Any]:
    id_flag = calibration.is_ood(id_s)
    labels = split.id_labels.numpy()
    out: dict[str, Any] = {
        "score": calibration.score,
        "threshold": calibration.threshold,
        "target_tpr": calibration.target_tpr,
        "id_pass_rate": float(1.0 - id_flag.mean()),
        "ood_reject_rate": {k: float(calibration.is_ood(v).mean()) for k, v in ood_s.items()},
        "id_reject_rate_by_class": {classes[y]: float(id_flag[labels == y].mean()) for y in sorted(set(labels))},
    }
    out["ood_reject_rate_by_group"] = {
        k: _rates_by_group(calibration.is_ood(v), split.ood_groups[k])
        for k, v in ood_s.items() if split.ood_groups.get(k) and any(split.ood_groups[k])
    }
    return out


def _metrics_by_group(id_s: np.ndarray, ood_s: Mapping[str, np.ndarray], split: SplitLogits) -> dict[str, Any]:
    """AUROC / FPR95 per sub-folder (near-OOD category) of every nested OOD set."""
    out: dict[str, Any] = {}
    for k, v in ood_s.items():
        groups = split.ood_groups.get(k)
        if not groups or not any(groups):
            continue
        g = np.asarray(groups)
        out[k] = {name: ood_metrics(id_s, v[g == name]) for name in sorted(set(groups))}
    return out


def _own_threshold(val_s: np.ndarray, id_s: np.ndarray, ood_s: Mapping[str, np.ndarray],
                   target_tpr: float = TPR_LEVEL) -> dict[str, Any]:
    """A score at its own threshold, fitted on ID val exactly as calibration fits the bundle's gate."""
    rec = CalibrationRecord.from_scores(val_s, target_tpr=target_tpr)
    return {"threshold": rec.threshold, "id_pass_rate": float(1.0 - rec.is_ood(id_s).mean()),
            "ood_reject_rate": {k: float(rec.is_ood(v).mean()) for k, v in ood_s.items()}}


def evaluate_logits(
    split: SplitLogits,
    logit_scale: float,
    params: ScoreParams,
    classes: Sequence[str],
    calibration: CalibrationRecord | None = None,
    scores: Sequence[str] = SCORE_NAMES,
    gate_params: ScoreParams | None = None,
) -> MethodEval:
    """All metrics of one model from its logits.

    Args:
        split: the model's logits on the task.
        logit_scale: the model's logit scale (for MCM).
        params: score parameters (ΔEnergy's c, reset, T; MCM's tau).
        classes: class names (label order).
        calibration: the bundle's calibration (for the pass/reject rates at its threshold).
        scores: score names to evaluate (see :func:`score_variants` for the extra reference rows).
        gate_params: the parameters the calibration was fitted with (default ``params``).

    Returns:
        The summary (JSON-ready) and raw scores.
    """
    variants = score_variants(params, scores)
    id_s = score_arrays(split.id_test, logit_scale, variants)
    ood_s: dict[str, dict[str, np.ndarray]] = {key: {} for key, _, _ in variants}
    for set_name, z in split.ood.items():
        for n, v in score_arrays(z, logit_scale, variants).items():
            ood_s[n][set_name] = v
    val_s = score_arrays(split.id_val, logit_scale, variants) if split.id_val is not None else None
    per_score: dict[str, Any] = {}
    for n in ood_s:
        # Per set only: near and far OOD are never averaged together (protocol §2).
        sets = {k: ood_metrics(id_s[n], v) for k, v in ood_s[n].items()}
        per_score[n] = {"ood": sets, "ood_by_group": _metrics_by_group(id_s[n], ood_s[n], split)}
        if val_s is not None:
            per_score[n]["at_own_threshold"] = _own_threshold(val_s[n], id_s[n], ood_s[n])
    cov = {k: accuracy(z, y) for k, (z, y) in split.covariate.items()}
    summary: dict[str, Any] = {
        "id_accuracy": accuracy(split.id_test, split.id_labels),
        "covariate_accuracy": {**cov, **({"mean": float(np.mean(list(cov.values())))} if cov else {})},
        "score_params": asdict(params),
        "scores": per_score,
        "counts": {"id_test": len(split.id_labels), **{f"ood/{k}": len(v) for k, v in split.ood.items()},
                   **{f"covariate/{k}": len(y) for k, (_, y) in split.covariate.items()}},
    }
    threshold_score = calibration.score if calibration else "delta_energy"
    if calibration is not None:
        gp = gate_params or params
        cal_id = id_score(calibration.score, split.id_test, logit_scale, gp).numpy()
        cal_ood = {k: id_score(calibration.score, z, logit_scale, gp).numpy() for k, z in split.ood.items()}
        summary["at_threshold"] = _threshold_summary(calibration, cal_id, cal_ood, split, classes)
    return MethodEval(summary, id_s, ood_s, list(classes), calibration.threshold if calibration else None,
                      threshold_score)


def _logits(module: ScoringModule, cache: FeatureCache, index: FolderIndex, device: torch.device,
            batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    enc = cache.get(index, device=device, batch_size=batch_size)
    with torch.no_grad():
        return module.logits_from_features(enc.features), enc.labels  # (N, K), (N,)


def _group_of(index: FolderIndex) -> list[str]:
    """Sub-folder of each image of an OOD set ('' for images directly in the set's folder)."""
    return [p.parent.relative_to(index.root).as_posix() if p.parent != index.root else "" for p in index.paths]


def task_logits(
    module: ScoringModule, task: TaskData, cache: FeatureCache, device: torch.device | str = "cpu",
    batch_size: int = 128,
) -> SplitLogits:
    """A scoring module's logits on the ID test split, every OOD set and every covariate set.

    Raises:
        ValueError: the task has no ID test split.
    """
    if task.test is None:
        raise DataError("evaluation needs an ID test split (DIR/id/test)")
    dev = torch.device(device)
    module.to(dev)
    id_z, id_y = _logits(module, cache, task.test, dev, batch_size)
    val_z = _logits(module, cache, task.val, dev, batch_size)[0].cpu() if task.val is not None else None
    ood = {k: _logits(module, cache, idx, dev, batch_size)[0] for k, idx in task.ood.items()}
    cov = {k: _logits(module, cache, idx, dev, batch_size) for k, idx in task.covariate.items()}
    module.cpu()
    # Readers skip unreadable files; groups must stay aligned with the logits.
    groups = {k: _group_of(idx) for k, idx in task.ood.items() if len(idx) == len(ood[k])}
    return SplitLogits(id_z.cpu(), id_y, {k: v.cpu() for k, v in ood.items()},
                       {k: (z.cpu(), y) for k, (z, y) in cov.items()}, groups, val_z)


def _check_classes(bundle: Bundle, task: TaskData) -> None:
    if list(bundle.manifest.classes) != list(task.class_names):
        raise DataError(
            f"{bundle.path}: bundle classes {bundle.manifest.classes[:5]}... differ from the data's "
            f"{list(task.class_names)[:5]}... (same classes in the same order are needed)"
        )


def evaluate_bundles(
    bundles: Mapping[str, str | Path],
    task: TaskData,
    *,
    cache_dir: str | Path,
    device: str = "cpu",
    write_manifest: bool = True,
    batch_size: int = 128,
    ood_val: FolderIndex | None = None,
) -> dict[str, MethodEval]:
    """Evaluate several bundles (one per method) on one task.

    Args:
        bundles: method name -> bundle directory (table rows in this order).
        task: the task's data (ID test, OOD sets, covariate sets).
        cache_dir: feature cache directory.
        device: where the vision tower runs.
        write_manifest: store each bundle's summary in its manifest's ``evaluation`` field.
        batch_size: images per forward pass.
        ood_val: a user's OOD *validation* images: each score's parameters are selected on ID val vs these
            (1-SE rule) before the test sets are scored; None keeps the bundle's parameters.

    Returns:
        Method name -> its evaluation.
    """
    out: dict[str, MethodEval] = {}
    for method, path in bundles.items():
        bundle = load_bundle(path)
        _check_classes(bundle, task)
        module = load_scoring_module(bundle)
        m = bundle.manifest
        cache = FeatureCache(cache_dir, module.visual, {"model_name": m.architecture.model_name,
                                                        "config": m.architecture.open_clip_config}, m.preprocess)
        split = task_logits(module, task, cache, device, batch_size)
        params, selected = module.score_params, None
        if ood_val is not None:
            if split.id_val is None:
                raise DataError("--ood-val needs an ID val split to select against (DIR/id/val)")
            ood_z = _logits(module, cache, ood_val, torch.device(device), batch_size)[0].cpu()  # (M, K)
            sel = select_on_ood_val(split.id_val, ood_z, module.logit_scale)
            params = merge_selected(sel, module.score_params)
            selected = {n: v.to_dict(all_rows=False) for n, v in sel.items()}
        ev = evaluate_logits(split, module.logit_scale, params, m.classes, m.calibration,
                             gate_params=module.score_params)
        ev.summary = {"method": method, "bundle": m.name, "version": m.version, **ev.summary}
        if selected is not None:
            ev.summary["selected_on_ood_val"] = {"set": str(ood_val.root) if ood_val else None, "scores": selected}
        if write_manifest:
            update_manifest(path, evaluation=json.loads(json.dumps(ev.summary)))
        logger.info("%s: ID acc %.3f, ΔEnergy AUROC %s", method, ev.summary["id_accuracy"],
                    {k: round(v["auroc"], 4) for k, v in ev.summary["scores"].get("delta_energy", {})
                     .get("ood", {}).items()})
        out[method] = ev
    return out

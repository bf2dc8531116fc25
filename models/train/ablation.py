"""Ablation over the EBM hyper-parameters and their selection on ID validation data only.

The grid covers ``ce_on``, λ (``ebm_weight``), ``mask_ratio`` and ``top_c`` (METHOD.md). It is
searched one parameter at a time (coordinate search, in the grid's order): each value of a parameter
is tried with the best values found so far for the earlier ones.

Selection criterion (ID validation data only; no OOD or covariate-shift image is ever used):

1. ``val_acc``: ID validation accuracy of the run trained on all ID classes.
2. ``val_open_auroc``: an open-set proxy built from ID data alone. The ID classes are split into
   ``holdout_folds`` folds; for each fold the same configuration is trained on the *other* classes
   and the ΔEnergy score (with the configuration's c) separates ID validation images of the trained
   classes (positive) from ID validation images of the held-out classes (pseudo-OOD); AUROC is
   averaged over folds. This is the closest thing to "OOD detection" that ID validation data can
   measure, and it is what λ, ``mask_ratio`` and ``top_c`` are meant to improve.

A configuration is eligible when its ``val_acc`` is within ``acc_tolerance`` of the best one seen
for the same parameter (OOD detection must not be bought with accuracy); among eligible ones the
highest ``val_open_auroc`` wins; ties keep the current value. Test-set metrics are computed for every
row *for the report only*; the selection never reads them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from models.clip_loading import LoadedClip
from models.scores import id_score
from models.scoring_module import ScoringModule
from models.train.data.folders import FolderIndex, TaskData, few_shot
from models.train.evaluate import evaluate_logits, ood_metrics, task_logits
from models.train.features import FeatureCache
from models.train.run_export import score_params_of
from models.train.trainer import PromptTrainer, TrainConfig

__all__ = [
    "SELECTION_CRITERION",
    "DEFAULT_GRID",
    "AblationConfig",
    "AblationResult",
    "class_folds",
    "open_set_val_auroc",
    "run_ablation",
    "ablation_markdown",
]

logger = logging.getLogger(__name__)

SELECTION_CRITERION = (
    "coordinate search in grid order; a value is eligible when its ID val accuracy is within acc_tolerance of "
    "the best for that parameter; among eligible values the highest val_open_auroc wins (ΔEnergy AUROC of ID val "
    "images of trained classes vs ID val images of held-out ID classes, models retrained per class fold); "
    "ties keep the current value. No OOD or covariate-shift test image is used."
)

# METHOD.md's ablation (ce_on, λ, mask_ratio, top_c) and the energy temperature T.
ABLATED: tuple[str, ...] = ("temperature", "ce_on", "ebm_weight", "mask_ratio", "top_c")

DEFAULT_GRID: tuple[tuple[str, tuple[Any, ...]], ...] = (
    ("ce_on", ("edited", "original")),
    ("ebm_weight", (0.0, 0.1, 0.3, 1.0, 3.0)),
    ("mask_ratio", (0.05, 0.1, 0.2, 0.4)),
    ("top_c", (1, 2, 3)),
    # T of the energy in ΔEnergy and in the EBM loss, searched last (it rescales the EBM term that λ
    # weighs). T = logit scale makes z/T the cosine similarity, where the reset to 0 ("cosine cropped
    # to zero") is no longer negligible; at T = 1 and CLIP's scale ΔEnergy_1 is a function of MSP.
    ("temperature", (1.0, 3.0, 10.0, 30.0, 100.0)),
)


@dataclass(frozen=True)
class AblationConfig:
    """How the ablation searches and selects."""

    grid: tuple[tuple[str, tuple[Any, ...]], ...] = DEFAULT_GRID  # parameters searched, in order, with values
    holdout_folds: int = 4  # class folds of the open-set validation proxy (each class held out once)
    acc_tolerance: float = 0.01  # eligible when val_acc >= best val_acc - this
    report_test: bool = True  # compute test metrics per row (for the report; never used to select)


@dataclass
class AblationResult:
    """Every evaluated configuration and the selected one."""

    rows: list[dict[str, Any]] = field(default_factory=list)  # one per (parameter, value) tried
    selected: dict[str, Any] = field(default_factory=dict)  # the chosen values of the grid's parameters
    criterion: str = ""  # the selection rule, in words (SELECTION_CRITERION)

    def to_dict(self) -> dict[str, Any]:
        return {"selected": self.selected, "criterion": self.criterion, "rows": self.rows}


def class_folds(num_classes: int, folds: int) -> list[list[int]]:
    """Split class indices into ``folds`` interleaved groups (class i goes to fold i mod folds)."""
    folds = max(2, min(folds, num_classes))
    return [[c for c in range(num_classes) if c % folds == f] for f in range(folds)]


def _relabel(index: FolderIndex, keep: Sequence[int]) -> FolderIndex:
    """The images of some classes, labels renumbered 0..len(keep)-1 in the order of ``keep``."""
    new = {old: i for i, old in enumerate(keep)}
    rows = [i for i, y in enumerate(index.labels) if y in new]
    sub = index.subset(rows)
    return replace(sub, labels=tuple(new[y] for y in sub.labels),
                   class_folders=tuple(index.class_folders[c] for c in keep),
                   class_names=tuple(index.class_names[c] for c in keep))


def open_set_val_auroc(
    clip: LoadedClip, cfg: TrainConfig, train: FolderIndex, val: FolderIndex, folds: int, out_dir: Path,
    cache: FeatureCache,
) -> float:
    """Mean over class folds of the ΔEnergy AUROC: val images of trained classes vs held-out classes."""
    aurocs = []
    params = score_params_of(cfg)
    for f, held in enumerate(class_folds(len(train.class_names), folds)):
        keep = [c for c in range(len(train.class_names)) if c not in held]
        trainer = PromptTrainer(clip, [train.class_names[c] for c in keep], cfg, out_dir / f"fold{f}", cache=cache)
        emb = trainer.fit(_relabel(train, keep), progress=False).class_embeddings
        id_feats = trainer.encode(_relabel(val, keep)).features
        ood_feats = trainer.encode(_relabel(val, held)).features
        with torch.no_grad():
            z_id = trainer.logit_scale * id_feats @ emb.t()  # (N, K')
            z_ood = trainer.logit_scale * ood_feats @ emb.t()  # (M, K')
        s_id = id_score("delta_energy", z_id, trainer.logit_scale, params).numpy()
        s_ood = id_score("delta_energy", z_ood, trainer.logit_scale, params).numpy()
        aurocs.append(ood_metrics(s_id, s_ood)["auroc"])
    return float(np.mean(aurocs))


def _test_metrics(clip: LoadedClip, emb: torch.Tensor, cfg: TrainConfig, task: TaskData, cache: FeatureCache,
                  scale: float) -> dict[str, Any]:
    module = ScoringModule(clip.model.visual, emb, scale, score_params_of(cfg))  # type: ignore[arg-type]
    ev = evaluate_logits(task_logits(module, task, cache), scale, module.score_params, task.class_names,
                         scores=("energy", "delta_energy")).summary
    out: dict[str, Any] = {"test_acc": ev["id_accuracy"], "test_cov_acc": ev["covariate_accuracy"].get("mean")}
    for s in ("energy", "delta_energy"):
        out[f"test_{s}_auroc"] = {k: v["auroc"] for k, v in ev["scores"][s]["ood"].items()}
        out[f"test_{s}_fpr95"] = {k: v["fpr95"] for k, v in ev["scores"][s]["ood"].items()}
        out[f"test_{s}_auroc_mean"] = ev["scores"][s]["mean"]["auroc"]
        out[f"test_{s}_fpr95_mean"] = ev["scores"][s]["mean"]["fpr95"]
    return out


def _evaluate_config(clip: LoadedClip, cfg: TrainConfig, task: TaskData, acfg: AblationConfig, out_dir: Path,
                     cache: FeatureCache) -> dict[str, Any]:
    assert task.val is not None  # checked by run_ablation
    train = few_shot(task.train, cfg.shots, cfg.seed)
    trainer = PromptTrainer(clip, task.class_names, cfg, out_dir / "all", cache=cache)
    res = trainer.fit(train, task.val, progress=False)
    row: dict[str, Any] = {"val_acc": res.history[-1]["val_acc"], "val_delta_e_lb": res.history[-1]["val_delta_e_lb"]}
    row["val_open_auroc"] = open_set_val_auroc(clip, cfg, train, task.val, acfg.holdout_folds, out_dir, cache)
    if acfg.report_test:
        row.update(_test_metrics(clip, res.class_embeddings, cfg, task, cache, trainer.logit_scale))
    return row


def _pick(rows: list[dict[str, Any]], current: Any, tol: float) -> Any:
    best_acc = max(r["val_acc"] for r in rows)
    eligible = [r for r in rows if r["val_acc"] >= best_acc - tol]
    top = max(r["val_open_auroc"] for r in eligible)
    winners = [r["value"] for r in eligible if r["val_open_auroc"] >= top - 1e-12]
    return current if current in winners else winners[0]


def run_ablation(
    clip: LoadedClip, task: TaskData, base: TrainConfig, out_dir: str | Path,
    acfg: AblationConfig | None = None, cache: FeatureCache | None = None, progress: bool = True,
) -> AblationResult:
    """Coordinate search over the grid from ``base`` (an EBM config); selection on ID val only.

    Args:
        clip: the CLIP.
        task: the task (train and val are used for selection; test/OOD/covariate only for the report).
        base: the starting configuration (method must be ``ebm``).
        out_dir: where runs and ``ablation.json`` go.
        acfg: grid and selection settings.
        cache: a feature cache to share.
        progress: show a progress bar over configurations.

    Returns:
        All rows and the selected values.
    """
    acfg = acfg or AblationConfig()
    if task.val is None:
        raise ValueError("the ablation selects on ID validation data: the task needs a val split")
    out = Path(out_dir)
    trainer = PromptTrainer(clip, task.class_names, base, out / "probe", cache=cache)
    cache = trainer.cache
    current = replace(base, method="ebm")
    result = AblationResult(criterion=SELECTION_CRITERION)
    seen: dict[TrainConfig, dict[str, Any]] = {}
    total = sum(len(v) for _, v in acfg.grid)
    bar = tqdm(total=total, desc="ablation", disable=not progress)
    for param, values in acfg.grid:
        rows = []
        for value in values:
            cfg = replace(current, **{param: value})
            if cfg not in seen:
                seen[cfg] = _evaluate_config(clip, cfg, task, acfg, out / f"{param}={value}", cache)
            rows.append({"param": param, "value": value, **{k: getattr(cfg, k) for k in ABLATED},
                         **seen[cfg]})
            bar.update(1)
            logger.info("ablation %s=%s: %s", param, value, {k: v for k, v in rows[-1].items() if "val" in k})
        chosen = _pick(rows, getattr(current, param), acfg.acc_tolerance)
        current = replace(current, **{param: chosen})
        for r in rows:
            r["selected"] = r["value"] == chosen
        result.rows += rows
    bar.close()
    result.selected = {k: getattr(current, k) for k, _ in acfg.grid}
    (out / "ablation.json").write_text(json.dumps({**result.to_dict(), "base": asdict(base)}, indent=2) + "\n",
                                       encoding="utf-8")
    logger.info("ablation selected %s", result.selected)
    return result


def ablation_markdown(result: AblationResult, command: str | None = None) -> str:
    """The ablation as a Markdown table (validation columns select; test columns are for the record)."""
    sets = list(result.rows[0].get("test_delta_energy_auroc", {})) if result.rows else []
    head = ["param", "value", "T", "ce_on", "λ", "mask", "c", "val acc", "val open AUROC"]
    head += ["test acc", "test cov acc"] + [f"ΔE AUROC {s}" for s in sets] + ["ΔE FPR95 mean", "energy AUROC mean"]
    lines = ["# Ablation (EBM)", ""]
    if command:
        lines += ["Produced by:", "", "```bash", command, "```", ""]
    lines += [f"Selected on ID validation only: `{result.selected}`.", "", "Criterion: " +
              result.criterion.replace("\n", " "), ""]
    lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in result.rows:
        mark = " **←**" if r.get("selected") else ""
        row = [r["param"], f"{r['value']}{mark}", str(r["temperature"]), r["ce_on"], str(r["ebm_weight"]),
               str(r["mask_ratio"]),
               str(r["top_c"]), f"{100 * r['val_acc']:.1f}", f"{100 * r['val_open_auroc']:.1f}"]
        if "test_acc" in r:
            row += [f"{100 * r['test_acc']:.1f}", f"{100 * (r['test_cov_acc'] or 0):.1f}"]
            row += [f"{100 * r['test_delta_energy_auroc'][s]:.1f}" for s in sets]
            row += [f"{100 * r['test_delta_energy_fpr95_mean']:.1f}", f"{100 * r['test_energy_auroc_mean']:.1f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"

"""EBM loss-parameter search on ID data only (protocol §5, step 1), and its report.

Every loss configuration of the grid (λ, ``ce_on``, ``mask_ratio``, loss T; loss c = 1) is run through
held-out-class validation (:mod:`models.train.selection`), jointly with ΔEnergy's score parameters:
a (loss, score) pair's criterion is the HOCV AUROC of that ΔEnergy variant on that loss's fold models.
The one-standard-error rule picks among all pairs whose loss configuration keeps the HOCV closed-set
accuracy within ``acc_tolerance`` of CoOp's (OOD detection is not to be bought with accuracy).

The report shows validation columns only: no test, OOD or covariate number is computed here, so the
selection is frozen before any test metric exists.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from models.clip_loading import LoadedClip
from models.markdown import markdown_table
from models.train.data.folders import TaskData
from models.train.features import FeatureCache
from models.train.selection import (
    Candidate,
    FoldLogits,
    HOCVConfig,
    Selection,
    TrainFn,
    changed_from_default,
    hocv_logits,
    one_se_pick,
    score_candidates,
)
from models.train.trainer import LOSS_PARAMS, PromptTrainer, TrainConfig

__all__ = [
    "SELECTION_CRITERION",
    "LOSS_DEFAULTS",
    "DEFAULT_GRID",
    "FULL_GRID",
    "AblationConfig",
    "AblationResult",
    "prompt_train_fn",
    "run_ablation",
    "ablation_markdown",
    "write_ablation",
]

logger = logging.getLogger(__name__)

SELECTION_CRITERION = (
    "held-out-class validation (ID val only): mean AUROC over folds x repeats of ID val images of the trained "
    "classes vs ID val images of held-out ID classes, models retrained per fold; (loss, ΔEnergy score) pairs "
    "searched jointly; loss configurations whose HOCV closed-set accuracy is more than acc_tolerance below "
    "CoOp's are ineligible; one-standard-error rule, fewest changes from METHOD.md defaults. "
    "No OOD or covariate-shift image is used."
)

# METHOD.md's defaults of the loss parameters (the 1-SE rule counts changes from these).
LOSS_DEFAULTS: dict[str, Any] = {"ebm_weight": 1.0, "mask_ratio": 0.1, "ce_on": "edited", "loss_temperature": 1.0,
                                 "loss_top_c": 1}
SCALE = "scale"  # grid value standing for the model's logit scale

# Protocol amendment 2 (compute on the shared machine): λ ∈ {0.1, 1} x ce_on; mask 0.1 and loss T 1 fixed.
# The wider grid of the original protocol, for a machine with time for it:
FULL_GRID: tuple[tuple[str, tuple[Any, ...]], ...] = (
    ("ebm_weight", (0.1, 0.3, 1.0, 3.0)),
    ("ce_on", ("edited", "original")),
    ("mask_ratio", (0.1, 0.3)),
    ("loss_temperature", (1.0, SCALE)),
)
DEFAULT_GRID: tuple[tuple[str, tuple[Any, ...]], ...] = (
    ("ebm_weight", (0.1, 1.0)),
    ("ce_on", ("edited", "original")),
)


@dataclass(frozen=True)
class AblationConfig:
    """How the loss search runs and selects."""

    grid: tuple[tuple[str, tuple[Any, ...]], ...] = DEFAULT_GRID  # full product of these values
    hocv: HOCVConfig = field(default_factory=HOCVConfig)  # the folds of the criterion
    acc_tolerance: float = 0.01  # eligible when HOCV closed-set accuracy >= CoOp's - this


@dataclass
class AblationResult:
    """Every loss configuration, the chosen (loss, ΔEnergy) pair and the fold models behind them."""

    rows: list[dict[str, Any]] = field(default_factory=list)  # one per loss configuration (validation only)
    selected: dict[str, Any] = field(default_factory=dict)  # chosen loss parameters
    selected_score: dict[str, Any] = field(default_factory=dict)  # chosen ΔEnergy parameters
    criterion: str = SELECTION_CRITERION
    coop_accuracy: float = float("nan")  # HOCV closed-set accuracy of CoOp (the guard's reference)
    selection: Selection | None = None  # the 1-SE search over all pairs
    # HOCV runs of "coop", the chosen "ebm" and, when in the grid, "ebm-default" (METHOD.md's loss)
    folds: dict[str, list[FoldLogits]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"selected": self.selected, "selected_score": self.selected_score, "criterion": self.criterion,
                "coop_hocv_accuracy": self.coop_accuracy, "rows": self.rows,
                "chosen": self.selection.to_dict(all_rows=False) if self.selection else None}


def prompt_train_fn(clip: LoadedClip, cfg: TrainConfig, cache: FeatureCache) -> TrainFn:
    """A HOCV training function: ``cfg`` with the fold's seed on the fold's classes."""
    def fn(names: list[str], sample: Any, seed: int, out: Path) -> torch.Tensor:
        trainer = PromptTrainer(clip, names, replace(cfg, seed=seed), out, cache=cache)
        return trainer.fit(sample, progress=False, checkpoints=False).class_embeddings

    return fn


def _loss_configs(base: TrainConfig, grid: tuple[tuple[str, tuple[Any, ...]], ...], scale: float) -> list[TrainConfig]:
    names = [p for p, _ in grid]
    out = []
    for values in itertools.product(*(v for _, v in grid)):
        params: dict[str, Any] = {n: (round(scale, 4) if v == SCALE else v) for n, v in zip(names, values, strict=True)}
        out.append(replace(base, method="ebm", **params))
    return out


def run_ablation(
    clip: LoadedClip, task: TaskData, base: TrainConfig, out_dir: str | Path,
    acfg: AblationConfig | None = None, cache: FeatureCache | None = None, progress: bool = True,
) -> AblationResult:
    """The loss search of protocol §5 step 1 (ID train and val only).

    Args:
        clip: the CLIP.
        task: the task (only train and val are read).
        base: the shared training schedule (its loss parameters are replaced by the grid's).
        out_dir: run directories and ``ablation.json``.
        acfg: grid, folds and the accuracy guard.
        cache: a feature cache of the frozen vision tower to share.
        progress: a progress bar over loss configurations.

    Returns:
        The rows, the chosen loss and ΔEnergy parameters, and the fold logits of CoOp and the chosen EBM.
    """
    acfg = acfg or AblationConfig()
    if task.val is None:
        raise ValueError("the ablation selects on ID validation data: the task needs a val split")
    out = Path(out_dir)
    probe = PromptTrainer(clip, task.class_names, base, out / "probe", cache=cache)
    cache, scale, k = probe.cache, probe.logit_scale, len(task.class_names)
    coop = replace(base, method="coop", ebm_weight=0.0, ce_on="original")
    coop_folds = hocv_logits(clip, task.train, task.val, cache, prompt_train_fn(clip, coop, cache), out / "coop",
                             acfg.hocv)
    coop_acc = float(np.mean([f.closed_accuracy for f in coop_folds]))
    result = AblationResult(coop_accuracy=coop_acc, folds={"coop": coop_folds})
    pairs: list[Candidate] = []
    by_loss: dict[str, list[FoldLogits]] = {}
    configs = _loss_configs(base, acfg.grid, scale)
    for cfg in tqdm(configs, desc="ablation", disable=not progress):
        loss = {p: getattr(cfg, p) for p in LOSS_PARAMS}
        key = json.dumps(loss, sort_keys=True)
        folds = hocv_logits(clip, task.train, task.val, cache, prompt_train_fn(clip, cfg, cache),
                            out / key.replace('"', "").replace(" ", "").strip("{}").replace(":", "="), acfg.hocv)
        by_loss[key] = folds
        acc = float(np.mean([f.closed_accuracy for f in folds]))
        eligible = acc >= coop_acc - acfg.acc_tolerance
        cands = score_candidates(folds, "delta_energy", k)
        n_loss = changed_from_default(loss, LOSS_DEFAULTS)
        if eligible:
            pairs += [Candidate({**loss, **c.params}, c.aurocs, n_loss + c.changed) for c in cands]
        best = max(cands, key=lambda c: c.mean)
        result.rows.append({**loss, "hocv_accuracy": acc, "eligible": eligible,
                            "default_score_auroc": cands[0].mean, "default_score_se": cands[0].std_error,
                            "best_score": best.params, "best_score_auroc": best.mean, "best_score_se": best.std_error})
        logger.info("ablation %s: acc %.3f (CoOp %.3f), ΔE AUROC default %.3f best %.3f", loss, acc, coop_acc,
                    cands[0].mean, best.mean)
    if not pairs:  # no loss configuration keeps CoOp's accuracy: fall back to METHOD.md's defaults, said plainly
        logger.warning("no EBM loss configuration within %.3f of CoOp's HOCV accuracy; using METHOD.md defaults",
                       acfg.acc_tolerance)
        key = json.dumps({p: LOSS_DEFAULTS[p] for p in LOSS_PARAMS}, sort_keys=True)
        cfg0 = replace(base, method="ebm", **LOSS_DEFAULTS)
        folds0 = by_loss.get(key) or hocv_logits(clip, task.train, task.val, cache,
                                                 prompt_train_fn(clip, cfg0, cache), out / "default", acfg.hocv)
        pairs = [Candidate({**LOSS_DEFAULTS, **c.params}, c.aurocs, c.changed)
                 for c in score_candidates(folds0, "delta_energy", k)]
        by_loss[key] = folds0
    chosen = one_se_pick(pairs)
    result.selection = Selection(chosen, pairs)
    result.selected = {p: chosen.params[p] for p in LOSS_PARAMS}
    result.selected_score = {p: v for p, v in chosen.params.items() if p not in LOSS_PARAMS}
    result.folds["ebm"] = by_loss[json.dumps(result.selected, sort_keys=True)]
    default_key = json.dumps({p: LOSS_DEFAULTS[p] for p in LOSS_PARAMS}, sort_keys=True)
    if default_key in by_loss:
        result.folds["ebm-default"] = by_loss[default_key]
    for r in result.rows:
        r["selected"] = {p: r[p] for p in LOSS_PARAMS} == result.selected
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    logger.info("ablation selected loss %s, ΔEnergy %s", result.selected, result.selected_score)
    return result


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def ablation_markdown(result: AblationResult, command: str | None = None) -> str:
    """The loss search as Markdown: validation columns only (selection is frozen before any test number)."""
    lines = ["# EBM loss search (held-out-class validation, ID data only)", ""]
    if command:
        lines += ["Produced by:", "", "```bash", command, "```", ""]
    lines += [f"Selected loss parameters: `{result.selected}`; ΔEnergy score parameters: `{result.selected_score}`.",
              "", f"Criterion: {result.criterion}", "",
              f"CoOp's HOCV closed-set accuracy: {_pct(result.coop_accuracy)}.", ""]
    head = ["λ", "ce_on", "mask", "loss T", "HOCV acc", "eligible", "ΔE AUROC (METHOD default) ± SE",
            "best ΔE variant", "its AUROC ± SE", "selected"]
    rows = [[r["ebm_weight"], r["ce_on"], r["mask_ratio"], r["loss_temperature"], _pct(r["hocv_accuracy"]),
             "yes" if r["eligible"] else "no",
             f"{_pct(r['default_score_auroc'])} ± {_pct(r['default_score_se'])}",
             ", ".join(f"{k}={v}" for k, v in r["best_score"].items() if k != "delta_energy_reset_logit"),
             f"{_pct(r['best_score_auroc'])} ± {_pct(r['best_score_se'])}", "**←**" if r.get("selected") else ""]
            for r in result.rows]
    return "\n".join(lines) + "\n" + markdown_table(head, rows) + "\n"


def write_ablation(results: str | Path, result: AblationResult, command: str) -> None:
    """``results/ablation.{json,md}`` (the one writer, used by ``deltagate ablate`` and the demo)."""
    out = Path(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.json").write_text(json.dumps({"command": command, **result.to_dict()}, indent=2) + "\n",
                                       encoding="utf-8")
    (out / "ablation.md").write_text(ablation_markdown(result, command), encoding="utf-8")

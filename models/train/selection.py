"""Selection on ID data only: held-out-class validation (HOCV), score search spaces, the 1-SE rule.

This is §5 of ``docs/evidence/protocol.md``, written once and used by the ablation (loss parameters),
the demo (the shipped bundle's score parameters) and the evidence pipeline (every arm, every split).

**HOCV.** The K ID classes are partitioned into ``folds`` groups by a seeded permutation, ``repeats``
times. For each (repeat, fold) the arm is trained (or, for zero-shot, prompted) on the other classes;
ID *val* images of the trained classes are the positives and ID val images of the held-out classes are
pseudo-OOD. A configuration's criterion is the mean AUROC over the ``folds * repeats`` runs, its
standard error their SD / sqrt(n). No OOD, near-OOD or covariate-shift image is ever read.

**One-standard-error rule.** Among candidates, m* is the best mean and SE* its standard error; those
with mean >= m* - SE* are eligible and the one with the fewest parameters changed from METHOD.md's
defaults wins (ties: higher mean). An ``ood_val`` criterion (a user's own OOD validation set,
``deltagate evaluate --ood-val``) uses the same rule with a stratified bootstrap SE.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.clip_loading import LoadedClip
from models.prompt_learner import zero_shot_class_embeddings
from models.scores import SCORE_NAMES, ScoreParams, cosine_logits, id_score
from models.scoring_spec import grid_values, score_param_fields, score_param_specs
from models.train.data.folders import FolderIndex, few_shot
from models.train.features import FeatureCache
from models.train.metrics import accuracy, auroc

__all__ = [
    "HOCVConfig",
    "FoldLogits",
    "Candidate",
    "Selection",
    "SCORE_PARAM_FIELDS",
    "score_space",
    "changed_from_default",
    "one_se_pick",
    "hocv_partitions",
    "relabel",
    "hocv_logits",
    "criterion",
    "select_scores",
    "merge_selected",
    "select_on_ood_val",
    "signal_check",
]

logger = logging.getLogger(__name__)

# Which ScoreParams fields belong to which score (a score's search never touches another's fields).
SCORE_PARAM_FIELDS: dict[str, tuple[str, ...]] = {name: score_param_fields(name) for name in SCORE_NAMES}


@dataclass(frozen=True)
class HOCVConfig:
    """How held-out-class validation partitions the ID classes (protocol §5)."""

    folds: int = 4  # class groups held out in turn
    repeats: int = 1  # independent partitions (train seed 1 + repeat); protocol amendment 2: 1 (was 2)
    seed: int = 20261202  # partitions come from default_rng([seed, repeat])
    shots: int = 16  # training images per kept class


@dataclass
class FoldLogits:
    """One HOCV run: logits of the fold's model on ID val images of kept and held-out classes."""

    id_logits: torch.Tensor  # (N, K') val images of the trained classes
    id_labels: torch.Tensor  # (N,) labels among the K' trained classes
    ood_logits: torch.Tensor  # (M, K') val images of the held-out classes
    logit_scale: float

    @property
    def closed_accuracy(self) -> float:
        """Accuracy on the trained classes' val images (the accuracy guard of the loss search)."""
        return accuracy(self.id_logits, self.id_labels)


@dataclass
class Candidate:
    """One configuration under the 1-SE rule."""

    params: dict[str, Any]  # what was varied (loss and/or score parameters)
    aurocs: list[float]  # one per HOCV run (or bootstrap replicate means for ood_val)
    changed: int  # parameters differing from METHOD.md's defaults
    se: float | None = None  # standard error; None: SD / sqrt(n) of ``aurocs``

    @property
    def mean(self) -> float:
        return float(np.mean(self.aurocs))

    @property
    def std_error(self) -> float:
        if self.se is not None:
            return self.se
        n = len(self.aurocs)
        return float(np.std(self.aurocs, ddof=1) / np.sqrt(n)) if n > 1 else 0.0


@dataclass
class Selection:
    """The chosen candidate of one search and every candidate it was chosen from."""

    chosen: Candidate
    candidates: list[Candidate] = field(default_factory=list)
    criterion: str = "hocv"

    def to_dict(self, all_rows: bool = True) -> dict[str, Any]:
        def row(c: Candidate) -> dict[str, Any]:
            return {**c.params, "mean": c.mean, "se": c.std_error, "changed": c.changed, "n": len(c.aurocs)}

        out: dict[str, Any] = {"criterion": self.criterion, "chosen": row(self.chosen),
                               "chosen_aurocs": list(self.chosen.aurocs)}
        if all_rows:
            out["candidates"] = [row(c) for c in self.candidates]
        return out


def score_space(name: str, logit_scale: float, num_classes: int) -> list[dict[str, Any]]:
    """The parameter dicts searched for one score: every combination of its parameters' grids as
    :class:`~models.scoring_spec.ScoreParams` declares them (protocol §4). The first is METHOD.md's default.

    Raises:
        KeyError: unknown score.
    """
    if name not in SCORE_PARAM_FIELDS:
        raise KeyError(f"unknown score {name!r}; valid: {', '.join(SCORE_PARAM_FIELDS)}")
    specs = [s for s in score_param_specs() if s.score == name]
    default = {s.name: s.default for s in specs}
    grids = [grid_values(s, logit_scale, num_classes) for s in specs]
    space = [dict(zip(default, values, strict=True)) for values in itertools.product(*grids)]
    return [default] + [p for p in space if p != default]


def changed_from_default(params: Mapping[str, Any], defaults: Mapping[str, Any] | None = None) -> int:
    """How many entries of ``params`` differ from METHOD.md's defaults (score and loss parameters)."""
    ref = {**{f.name: getattr(ScoreParams(), f.name) for f in fields(ScoreParams)}, **(defaults or {})}
    return sum(1 for k, v in params.items() if k in ref and ref[k] != v)


def one_se_pick(candidates: Sequence[Candidate]) -> Candidate:
    """The 1-SE rule: among candidates within one SE of the best mean, the fewest changes; then the best mean."""
    if not candidates:
        raise ValueError("nothing to select from")
    best = max(candidates, key=lambda c: c.mean)
    bar = best.mean - best.std_error
    eligible = [c for c in candidates if c.mean >= bar - 1e-12]
    return min(eligible, key=lambda c: (c.changed, -c.mean))


def hocv_partitions(num_classes: int, cfg: HOCVConfig) -> list[tuple[int, list[int]]]:
    """(repeat, held-out classes) of every HOCV run: ``cfg.repeats`` seeded partitions into ``cfg.folds`` groups."""
    folds = max(2, min(cfg.folds, num_classes))
    out = []
    for r in range(cfg.repeats):
        perm = np.random.default_rng([cfg.seed, r]).permutation(num_classes)
        out += [(r, sorted(int(c) for c in perm[f::folds])) for f in range(folds)]
    return out


def relabel(index: FolderIndex, keep: Sequence[int]) -> FolderIndex:
    """The images of some classes, labels renumbered 0..len(keep)-1 in the order of ``keep``."""
    new = {old: i for i, old in enumerate(keep)}
    rows = [i for i, y in enumerate(index.labels) if y in new]
    sub = index.subset(rows)
    return replace(sub, labels=tuple(new[y] for y in sub.labels),
                   class_folders=tuple(index.class_folders[c] for c in keep),
                   class_names=tuple(index.class_names[c] for c in keep))


# train_fn(kept class names, few-shot train index of the kept classes, seed, run dir) -> (K', D) embeddings
TrainFn = Callable[[list[str], FolderIndex, int, Path], torch.Tensor]


def hocv_logits(
    clip: LoadedClip, train: FolderIndex, val: FolderIndex, cache: FeatureCache, train_fn: TrainFn | None,
    out_dir: Path, cfg: HOCVConfig = HOCVConfig(),
) -> list[FoldLogits]:
    """Run HOCV for one arm: the logits of every fold's model on ID val.

    Args:
        clip: the frozen CLIP (its logit scale scales the logits).
        train: ID train (all classes); each fold samples ``cfg.shots`` per kept class.
        val: ID val (all classes): kept classes = positives, held-out classes = pseudo-OOD.
        cache: feature cache of the frozen vision tower.
        train_fn: trains prompts for the kept classes; None = zero-shot prompts.
        out_dir: run directories of the folds.
        cfg: the partitions.
    """
    model: Any = clip.model
    scale = float(model.logit_scale.exp().item())
    names = list(train.class_names)
    out = []
    for r, held in hocv_partitions(len(names), cfg):
        keep = [c for c in range(len(names)) if c not in held]
        kept_names = [names[c] for c in keep]
        if train_fn is None:
            emb = zero_shot_class_embeddings(model, clip.tokenizer, kept_names).cpu()  # (K', D)
        else:
            sample = few_shot(relabel(train, keep), cfg.shots, 1 + r)
            emb = train_fn(kept_names, sample, 1 + r, out_dir / f"r{r}-held{'-'.join(map(str, held))}")
        id_split = cache.get(relabel(val, keep))
        ood_split = cache.get(relabel(val, held))
        with torch.no_grad():
            out.append(FoldLogits(cosine_logits(id_split.features, emb, scale), id_split.labels,
                                  cosine_logits(ood_split.features, emb, scale), scale))
    return out


def criterion(folds: Sequence[FoldLogits], name: str, params: ScoreParams) -> list[float]:
    """HOCV AUROC of one score configuration in every fold run."""
    out = []
    for f in folds:
        s_id = id_score(name, f.id_logits, f.logit_scale, params).numpy()
        s_ood = id_score(name, f.ood_logits, f.logit_scale, params).numpy()
        out.append(auroc(s_id, s_ood))
    return out


def score_candidates(folds: Sequence[FoldLogits], name: str, num_classes: int,
                     base: ScoreParams | None = None) -> list[Candidate]:
    """Every configuration of one score's search space with its HOCV AUROCs."""
    base = base or ScoreParams()
    scale = folds[0].logit_scale
    kept = folds[0].id_logits.shape[-1]  # the folds' models see K' < K classes: c = K maps to c = K'
    out = []
    for p in score_space(name, scale, num_classes):
        q = dict(p)
        if "delta_energy_top_c" in q:
            c = q["delta_energy_top_c"]
            q["delta_energy_top_c"] = min(c, kept) if c < num_classes else kept
        out.append(Candidate(p, criterion(folds, name, replace(base, **q)), changed_from_default(p)))
    return out


def select_scores(folds: Sequence[FoldLogits], num_classes: int,
                  names: Iterable[str] = SCORE_NAMES) -> dict[str, Selection]:
    """Each score's own parameters by the 1-SE rule on the same HOCV runs."""
    out = {}
    for name in names:
        cands = score_candidates(folds, name, num_classes)
        out[name] = Selection(one_se_pick(cands), cands)
    return out


def select_on_ood_val(id_val_logits: torch.Tensor, ood_val_logits: torch.Tensor, logit_scale: float,
                      names: Iterable[str] = SCORE_NAMES, n_boot: int = 100, seed: int = 0) -> dict[str, Selection]:
    """Each score's parameters selected on a user's OOD validation set (``deltagate evaluate --ood-val``).

    The criterion is AUROC(ID val vs OOD val); its standard error comes from a stratified bootstrap of the
    images (ID and OOD resampled separately, the same draws for every candidate), so the 1-SE rule applies.
    """
    num_classes = int(id_val_logits.shape[-1])
    rng = np.random.default_rng(seed)
    n, m = len(id_val_logits), len(ood_val_logits)
    draws = [(rng.integers(0, n, n), rng.integers(0, m, m)) for _ in range(n_boot)]
    out = {}
    for name in names:
        cands = []
        for p in score_space(name, logit_scale, num_classes):
            params = replace(ScoreParams(), **p)
            s_id = id_score(name, id_val_logits, logit_scale, params).numpy()
            s_ood = id_score(name, ood_val_logits, logit_scale, params).numpy()
            boot = [auroc(s_id[i], s_ood[j]) for i, j in draws]
            cands.append(Candidate(p, [auroc(s_id, s_ood)], changed_from_default(p), se=float(np.std(boot, ddof=1))))
        out[name] = Selection(one_se_pick(cands), cands, criterion="ood_val")
    return out


def merge_selected(selections: Mapping[str, Selection], base: ScoreParams | None = None) -> ScoreParams:
    """One ScoreParams holding every score's selected parameters (what a bundle stores)."""
    params = asdict(base or ScoreParams())
    for name, sel in selections.items():
        params.update({k: v for k, v in sel.chosen.params.items() if k in SCORE_PARAM_FIELDS[name]})
    return ScoreParams(**params)


def signal_check(aurocs: Sequence[float]) -> dict[str, Any]:
    """Whether a criterion carries signal: the 95% t-interval of its fold AUROCs excludes 0.5 (protocol §5)."""
    from scipy import stats

    a = np.asarray(aurocs, dtype=np.float64)
    if len(a) < 2 or np.std(a) == 0:
        lo = hi = float(a.mean())
    else:
        ci = stats.ttest_1samp(a, 0.5).confidence_interval(0.95)
        lo, hi = float(ci.low), float(ci.high)
    return {"mean": float(a.mean()), "ci95": [lo, hi], "above_chance": lo > 0.5}

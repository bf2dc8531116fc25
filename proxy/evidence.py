"""The pre-registered multi-split, multi-seed experiment (``docs/evidence/protocol.md``).

For every pre-registered ID split of one world and one frozen backbone:

1. selection on ID data only (:func:`select_arms`): the EBM loss search jointly with ΔEnergy's score
   parameters (:mod:`proxy.ablation`), then every arm's every score on the same held-out-class
   folds, with the 1-SE rule; written before any test metric exists;
2. the arms (zero-shot, CoOp, EBM with the selected loss, EBM with METHOD.md's loss) trained on all ID
   classes with prompt-tuning seeds 1..10 (zero-shot once), each scored with its own selected
   parameters and METHOD.md's default rows (:func:`models.train.evaluate.evaluate_logits`);
3. per-run records; after all splits, the endpoints P1–P4 and C5 with their confidence intervals and
   verdicts (:mod:`proxy.stats`), and the secondary tables.

A split that finished is not rerun (its records are reused when the configuration is the same), so an
interrupted run continues.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.clip_loading import LoadedClip
from models.markdown import markdown_table
from models.prompt_learner import zero_shot_class_embeddings
from models.scores import ScoreParams
from models.scoring_module import ScoringModule
from models.train.data.folders import TaskData, few_shot
from models.train.evaluate import MethodEval, evaluate_logits, task_logits
from models.train.features import FeatureCache
from models.train.metrics import correct
from models.train.selection import (
    Selection,
    hocv_logits,
    merge_selected,
    select_scores,
    signal_check,
)
from models.train.trainer import LOSS_PARAMS, PromptTrainer, TrainConfig
from proxy.ablation import LOSS_DEFAULTS, AblationConfig, AblationResult, run_ablation
from proxy.stats import (
    mcnemar_exact,
    paired_bootstrap_auroc,
    spearman,
    t_interval,
    two_stage_ci,
    verdict,
)

__all__ = [
    "ARMS",
    "EvidenceConfig",
    "ArmSelection",
    "select_arms",
    "selection_json",
    "run_split",
    "endpoints",
    "evidence_markdown",
    "headline_markdown",
    "run_evidence",
]

logger = logging.getLogger(__name__)

ARMS: tuple[str, ...] = ("zero-shot", "coop", "ebm", "ebm-default")
BASELINES: tuple[str, ...] = ("msp", "max_logit", "energy", "mcm")
DEFAULT_KEYS = {"delta_energy": "delta_energy@c=1,T=1", "energy": "energy@T=1", "mcm": "mcm@tau=1"}


@dataclass(frozen=True)
class EvidenceConfig:
    """The experiment's pre-registered constants (protocol §2–§7)."""

    seeds: tuple[int, ...] = tuple(range(1, 11))  # prompt-tuning seeds per trained arm
    n_random_splits: int = 4  # random ID splits besides the default one
    split_seed: int = 20261201  # their generator seed
    split_size: int = 8  # classes per random split
    ablation: AblationConfig = field(default_factory=AblationConfig)  # the loss search and the HOCV folds
    n_boot_images: int = 2000  # within-run image bootstrap
    n_boot_overall: int = 10_000  # two-stage bootstrap over splits and seeds
    boot_seed: int = 12345  # the two-stage bootstrap's seed


@dataclass
class ArmSelection:
    """One arm's selected training and score parameters on one split."""

    arm: str
    train: TrainConfig | None  # None: zero-shot
    scores: dict[str, Selection]
    params: ScoreParams  # every score's selected parameters in one record

    def to_dict(self) -> dict[str, Any]:
        chosen = {n: {**s.chosen.params, "hocv_auroc": s.chosen.mean, "hocv_se": s.chosen.std_error,
                      "signal": signal_check(s.chosen.aurocs)} for n, s in self.scores.items()}
        return {"arm": self.arm, "loss": self.train.loss_params if self.train else None,
                "score_params": asdict(self.params), "scores": chosen}


def arm_configs(base: TrainConfig, ablation: AblationResult) -> dict[str, TrainConfig | None]:
    """The training configuration of every arm (protocol §3)."""
    return {
        "zero-shot": None,
        "coop": replace(base, method="coop", ebm_weight=0.0, ce_on="original"),
        "ebm": replace(base, method="ebm", **ablation.selected),
        "ebm-default": replace(base, method="ebm", **{k: LOSS_DEFAULTS[k] for k in LOSS_PARAMS}),
    }


def select_arms(
    clip: LoadedClip, task: TaskData, base: TrainConfig, work: Path, acfg: AblationConfig, cache: FeatureCache,
    arms: Sequence[str] = ARMS, progress: bool = False,
) -> tuple[dict[str, ArmSelection], AblationResult]:
    """Protocol §5 on one split: the loss search, then each arm's scores on the same HOCV folds."""
    assert task.val is not None, "selection needs ID val"
    ablation = run_ablation(clip, task, base, work / "ablation", acfg, cache=cache, progress=progress)
    cfgs = arm_configs(base, ablation)
    k = len(task.class_names)
    out: dict[str, ArmSelection] = {}
    for arm in arms:
        if arm == "zero-shot":
            folds = hocv_logits(clip, task.train, task.val, cache, None, work / "zero-shot", acfg.hocv)
        elif arm in ablation.folds:
            folds = ablation.folds[arm]
        else:  # ebm-default outside the grid
            from proxy.ablation import prompt_train_fn

            cfg = cfgs[arm]
            assert cfg is not None
            folds = hocv_logits(clip, task.train, task.val, cache, prompt_train_fn(clip, cfg, cache), work / arm,
                                acfg.hocv)
        sel = select_scores(folds, k)
        if arm == "ebm" and ablation.selection is not None:
            sel["delta_energy"] = ablation.selection  # chosen jointly with the loss
        out[arm] = ArmSelection(arm, cfgs[arm], sel, merge_selected(sel))
    return out, ablation


def selection_json(selected: dict[str, ArmSelection], ablation: AblationResult) -> dict[str, Any]:
    """What was selected on one split (written before any test metric is computed)."""
    return {"arms": {a: s.to_dict() for a, s in selected.items()}, "ablation": ablation.to_dict()}


def _train(clip: LoadedClip, task: TaskData, cfg: TrainConfig | None, seed: int, out: Path,
           cache: FeatureCache) -> torch.Tensor:
    if cfg is None:
        return zero_shot_class_embeddings(clip.model, clip.tokenizer, list(task.class_names)).cpu()  # (K, D)
    run = replace(cfg, seed=seed)
    trainer = PromptTrainer(clip, task.class_names, run, out, cache=cache)
    return trainer.fit(few_shot(task.train, run.shots, seed), progress=False, checkpoints=False).class_embeddings


def _record(ev: MethodEval, split: Any) -> dict[str, Any]:
    """The compact per-run record the endpoints are computed from."""
    s = ev.summary
    cov_correct = [correct(z, y).numpy() for z, y in split.covariate.values()]
    return {
        "id_accuracy": s["id_accuracy"], "covariate_accuracy": s["covariate_accuracy"],
        "scores": {k: {"ood": v["ood"], "by_group": {g: {c: m["auroc"] for c, m in cats.items()}
                                                     for g, cats in v["ood_by_group"].items()}}
                   for k, v in s["scores"].items()},
        "_id_correct": correct(split.id_test, split.id_labels).numpy(),
        "_cov_correct": np.concatenate(cov_correct) if cov_correct else np.zeros(0, dtype=bool),
    }


def _within_run(ev: MethodEval, near: str, n_boot: int, seed: int) -> dict[str, Any]:
    """Seed-level image statistics: paired bootstrap of ΔE - energy / ΔE - MCM, and Spearman correlations."""
    out: dict[str, Any] = {}
    for base in ("energy", "mcm"):
        bs = paired_bootstrap_auroc(ev.id_scores["delta_energy"], ev.ood_scores["delta_energy"][near],
                                    ev.id_scores[base], ev.ood_scores[base][near], n_boot, seed)
        out[f"delta_energy-{base}"] = {"diff": bs["diff"], "ci95": bs["ci95"], "_replicates": bs["replicates"]}
    de_keys = {"selected": "delta_energy", "default": DEFAULT_KEYS["delta_energy"]}
    rho: dict[str, Any] = {}
    for label, key in de_keys.items():
        key = key if key in ev.id_scores else "delta_energy"
        de = np.concatenate([ev.id_scores[key], ev.ood_scores[key][near]])
        for other in ("msp", "max_logit"):
            rho[f"{label}:{other}"] = spearman(de, np.concatenate([ev.id_scores[other], ev.ood_scores[other][near]]))
    out["spearman"] = rho
    return out


def _want(task: TaskData, base: TrainConfig, cfg: EvidenceConfig) -> dict[str, Any]:
    return dict(json.loads(json.dumps({"classes": list(task.class_names), "config": asdict(cfg),
                                       "train": asdict(base)})))


def _finished(work: Path, task: TaskData, base: TrainConfig, cfg: EvidenceConfig) -> dict[str, Any] | None:
    """A split's records when it already finished with the same configuration."""
    done = work / "split.json"
    if not done.is_file():
        return None
    doc = json.loads(done.read_text(encoding="utf-8"))
    return dict(doc) if doc.get("want") == _want(task, base, cfg) else None


NEAR_SET = "near"  # the pooled near-OOD set of a split (every near category), the endpoints' default


def _write_selection(work: Path, selected: dict[str, ArmSelection], ablation: AblationResult) -> dict[str, Any]:
    """Write the split's selection (``work/selection.json``) before any arm is trained: it is frozen first."""
    doc = selection_json(selected, ablation)
    work.mkdir(parents=True, exist_ok=True)
    (work / "selection.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return doc


def _run_arms(clip: LoadedClip, task: TaskData, selected: dict[str, ArmSelection], cfg: EvidenceConfig, work: Path,
              cache: FeatureCache) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Every arm with every seed (zero-shot once): train, score with the arm's selected parameters, record.

    Returns:
        The run records by ``"arm/seed"``, and each arm's within-run statistics (on its first seed).
    """
    model: Any = clip.model
    scale = float(model.logit_scale.exp().item())
    records: dict[str, dict[str, Any]] = {}
    within: dict[str, dict[str, Any]] = {}
    embeddings: dict[tuple[str, int], torch.Tensor] = {}  # identical arms (EBM selected = METHOD.md's) train once
    for arm, sel in selected.items():
        for seed in [0] if sel.train is None else list(cfg.seeds):
            key = (json.dumps(asdict(sel.train), sort_keys=True) if sel.train else "zero-shot", seed)
            if key not in embeddings:
                embeddings[key] = _train(clip, task, sel.train, seed, work / "runs" / f"{arm}-{seed}", cache)
            logits = task_logits(ScoringModule(model.visual, embeddings[key], scale, sel.params), task, cache)
            run = evaluate_logits(logits, scale, sel.params, task.class_names)
            records[f"{arm}/{seed}"] = _record(run, logits)
            if seed in (0, cfg.seeds[0]):
                within[arm] = _within_run(run, NEAR_SET, cfg.n_boot_images, cfg.boot_seed)
    return records, within


def _ood_sets(task: TaskData, records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The near set, the hard-near set (the look-alikes; the near set when the split has none) and its categories."""
    hard = "near_hard" if "near_hard" in task.ood else NEAR_SET
    categories = sorted({c for r in records.values() for c in r["scores"]["msp"]["by_group"].get(hard, {})})
    return {"near_set": NEAR_SET, "hard_set": hard, "hard_categories": categories if hard != NEAR_SET else []}


def _mcnemar_ebm_vs_coop(records: dict[str, dict[str, Any]], seed: int | None) -> dict[str, Any]:
    """McNemar's exact test of EBM against CoOp on one seed's paired runs: ID test and covariate accuracy."""
    if seed is None:
        return {}
    ebm, coop = records[f"ebm/{seed}"], records[f"coop/{seed}"]
    return {"seed": seed, "covariate": mcnemar_exact(ebm["_cov_correct"], coop["_cov_correct"]),
            "id_test": mcnemar_exact(ebm["_id_correct"], coop["_id_correct"])}


def _public(record: dict[str, Any]) -> dict[str, Any]:
    """A record without its ``_`` fields (per-image arrays the statistics use, never written)."""
    return {k: v for k, v in record.items() if not k.startswith("_")}


def _public_within(within: dict[str, Any]) -> dict[str, Any]:
    return {k: v if k == "spearman" else _public(v) for k, v in within.items()}


def _replicates(within: dict[str, Any] | None) -> dict[str, list[float]]:
    """A run's bootstrap replicates of each paired difference (zero-shot's: the overall interval resamples them)."""
    return {k: v["_replicates"].tolist() for k, v in (within or {}).items() if k != "spearman"}


def run_split(
    clip: LoadedClip, name: str, task: TaskData, base: TrainConfig, cfg: EvidenceConfig, work: Path,
    cache: FeatureCache, progress: bool = False,
) -> dict[str, Any]:
    """Selection, then every arm and seed on one split; returns (and writes) the split's records."""
    finished = _finished(work, task, base, cfg)
    if finished is not None:
        logger.info("reusing finished split %s", name)
        return finished
    start = time.perf_counter()
    selected, ablation = select_arms(clip, task, base, work, cfg.ablation, cache, progress=progress)
    selection = _write_selection(work, selected, ablation)
    selection_s = time.perf_counter() - start
    records, within = _run_arms(clip, task, selected, cfg, work, cache)
    doc = {
        "want": _want(task, base, cfg), "name": name, "classes": list(task.class_names), **_ood_sets(task, records),
        "selection": selection["arms"], "coop_hocv_accuracy": ablation.coop_accuracy,
        "records": {run: _public(r) for run, r in records.items()},
        "within_run": {arm: _public_within(w) for arm, w in within.items()},
        "zero_shot_replicates": _replicates(within.get("zero-shot")),
        "mcnemar": _mcnemar_ebm_vs_coop(records, cfg.seeds[0] if cfg.seeds else None),
        "seconds": {"selection": selection_s, "total": time.perf_counter() - start},
        "counts": task.summary(),
    }
    (work / "split.json").write_text(json.dumps(doc) + "\n", encoding="utf-8")
    logger.info("split %s done in %.0f s", name, doc["seconds"]["total"])
    return doc


# ----------------------------------------------------------------------------------------- endpoints
def _auroc(rec: dict[str, Any], key: str, oodset: str) -> float:
    scores = rec["scores"]
    return float(scores.get(key, scores[key.split("@")[0]])["ood"][oodset]["auroc"])


def _fpr(rec: dict[str, Any], key: str, oodset: str) -> float:
    scores = rec["scores"]
    return float(scores.get(key, scores[key.split("@")[0]])["ood"][oodset]["fpr95"])


def _seeds(doc: dict[str, Any], arm: str) -> list[int]:
    return sorted(int(k.split("/")[1]) for k in doc["records"] if k.split("/")[0] == arm)


Pair = Callable[[dict[str, Any], dict[str, Any]], float]


def _diffs(doc: dict[str, Any], arm_a: str, arm_b: str, fn: Pair) -> list[float]:
    """Paired differences fn(record of arm_a, record of arm_b) over the seeds both arms ran."""
    seeds = sorted(set(_seeds(doc, arm_a)) & set(_seeds(doc, arm_b))) if arm_a != arm_b else _seeds(doc, arm_a)
    return [fn(doc["records"][f"{arm_a}/{s}"], doc["records"][f"{arm_b}/{s}"]) for s in seeds]


def _endpoint(docs: Sequence[dict[str, Any]], arm_a: str, arm_b: str, fn: Pair, margin: float,
              replicates: Callable[[dict[str, Any]], list[float] | None] | None = None,
              n_boot: int = 10_000, seed: int = 12345) -> dict[str, Any]:
    per_split = []
    groups = []
    for d in docs:
        diffs = _diffs(d, arm_a, arm_b, fn)
        per_split.append({"split": d["name"], **t_interval(diffs)})
        reps = replicates(d) if replicates else None
        # A deterministic arm (one run per split): stage two resamples images around the point estimate.
        groups.append(reps if (reps and len(diffs) == 1) else diffs)
    overall = two_stage_ci(groups, n_boot, seed)
    return {"overall": overall, "per_split": per_split, "verdict": verdict(overall["ci95"], margin)}


def _score_diff(a: dict[str, Any], _b: dict[str, Any], first: str, second: str, oodset: str) -> float:
    """AUROC(first) - AUROC(second) on one run (same model, same images)."""
    return _auroc(a, first, oodset) - _auroc(a, second, oodset)


def _fpr_diff(a: dict[str, Any], _b: dict[str, Any], worse: str, better: str, oodset: str) -> float:
    """FPR95(worse) - FPR95(better): positive when ``better`` has the lower FPR."""
    return _fpr(a, worse, oodset) - _fpr(a, better, oodset)


def _arm_diff(a: dict[str, Any], b: dict[str, Any], what: str) -> float:
    """Accuracy difference of two arms' runs with the same seed."""
    if what == "covariate":
        return float(a["covariate_accuracy"]["mean"] - b["covariate_accuracy"]["mean"])
    return float(a["id_accuracy"] - b["id_accuracy"])


def _zs_replicates(doc: dict[str, Any], base: str) -> list[float] | None:
    reps = doc["zero_shot_replicates"].get(f"delta_energy-{base}")
    return list(reps) if reps else None


def endpoints(docs: Sequence[dict[str, Any]], cfg: EvidenceConfig = EvidenceConfig()) -> dict[str, Any]:
    """P1–P4, C5 and the secondary differences with their CIs and verdicts (protocol §6–§8)."""
    nb, bs = cfg.n_boot_overall, cfg.boot_seed
    out: dict[str, Any] = {"primary": {}, "secondary": {}}
    for arm, tag in (("zero-shot", "P1"), ("ebm", "P2"), ("coop", "S-coop"), ("ebm-default", "S-ebm-default")):
        block = out["primary"] if tag.startswith("P") else out["secondary"]
        for base in ("energy", "mcm"):
            reps = partial(_zs_replicates, base=base) if arm == "zero-shot" else None
            block[f"{tag} {arm}: ΔE − {base}, near AUROC"] = _endpoint(
                docs, arm, arm, partial(_score_diff, first="delta_energy", second=base, oodset="near"), 0.01,
                replicates=reps, n_boot=nb, seed=bs)
            block[f"{tag} {arm}: {base} − ΔE, near FPR95 (lower is better)"] = _endpoint(
                docs, arm, arm, partial(_fpr_diff, worse=base, better="delta_energy", oodset="near"), 0.01,
                n_boot=nb, seed=bs)
        for base in ("max_logit", "msp"):
            out["secondary"][f"{tag} {arm}: ΔE − {base}, near AUROC"] = _endpoint(
                docs, arm, arm, partial(_score_diff, first="delta_energy", second=base, oodset="near"), 0.01,
                n_boot=nb, seed=bs)
        out["secondary"][f"{tag} {arm}: ΔE(METHOD default) − energy(T=1), near AUROC"] = _endpoint(
            docs, arm, arm, partial(_score_diff, first=DEFAULT_KEYS["delta_energy"], second=DEFAULT_KEYS["energy"],
                                    oodset="near"), 0.01, n_boot=nb, seed=bs)
    for arm_a in ("ebm", "ebm-default"):
        primary = arm_a == "ebm"
        for score in ("delta_energy", "energy", "mcm"):
            tag = "P3" if primary and score == "delta_energy" else f"S-P3 {arm_a}"
            block = out["primary"] if tag == "P3" else out["secondary"]
            block[f"{tag}: {arm_a} − coop, hard-near AUROC of {score}"] = _endpoint_hard(docs, arm_a, score, nb, bs)
        key = "P4" if primary else f"S-P4 {arm_a}"
        (out["primary"] if primary else out["secondary"])[f"{key}: {arm_a} − coop, covariate accuracy"] = _endpoint(
            docs, arm_a, "coop", partial(_arm_diff, what="covariate"), 0.005, n_boot=nb, seed=bs)
        out["secondary"][f"S: {arm_a} − coop, ID accuracy"] = _endpoint(
            docs, arm_a, "coop", partial(_arm_diff, what="id"), 0.005, n_boot=nb, seed=bs)
    out["primary"]["C5: ebm+ΔE − coop+(its HOCV-best baseline score), near AUROC"] = _c5(docs, nb, bs)
    return out


def _hard_diff(a: dict[str, Any], b: dict[str, Any], score: str, oodset: str) -> float:
    return _auroc(a, score, oodset) - _auroc(b, score, oodset)


def _endpoint_hard(docs: Sequence[dict[str, Any]], arm_a: str, score: str, n_boot: int, seed: int) -> dict[str, Any]:
    per_split, groups = [], []
    for d in docs:
        diffs = _diffs(d, arm_a, "coop", partial(_hard_diff, score=score, oodset=str(d["hard_set"])))
        per_split.append({"split": d["name"], "set": d["hard_set"], **t_interval(diffs)})
        groups.append(diffs)
    overall = two_stage_ci(groups, n_boot, seed)
    return {"overall": overall, "per_split": per_split, "verdict": verdict(overall["ci95"], 0.01)}


def _c5_diff(a: dict[str, Any], b: dict[str, Any], coop_score: str) -> float:
    return _auroc(a, "delta_energy", "near") - _auroc(b, coop_score, "near")


def _c5(docs: Sequence[dict[str, Any]], n_boot: int, seed: int) -> dict[str, Any]:
    per_split, groups = [], []
    for d in docs:
        coop = d["selection"]["coop"]["scores"]
        best = max(BASELINES, key=lambda n: float(coop[n]["hocv_auroc"]))
        diffs = _diffs(d, "ebm", "coop", partial(_c5_diff, coop_score=best))
        per_split.append({"split": d["name"], "coop_score": best, **t_interval(diffs)})
        groups.append(diffs)
    overall = two_stage_ci(groups, n_boot, seed)
    return {"overall": overall, "per_split": per_split, "verdict": verdict(overall["ci95"], 0.10, lower_needed=0.10)}


CLAIMS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("C1", "ΔEnergy beats energy and MCM as a post-hoc score (zero-shot CLIP)", ("P1 zero-shot",)),
    ("C2", "ΔEnergy beats energy and MCM on the EBM-tuned model", ("P2 ebm",)),
    ("C3", "EBM improves hard-near OOD detection over CoOp (ΔEnergy AUROC)", ("P3:",)),
    ("C4", "EBM improves covariate-shift accuracy over CoOp", ("P4:",)),
    ("C5", "the gain over recent approaches is 10–25 AUROC points", ("C5:",)),
)


def claim_verdicts(ep: dict[str, Any]) -> list[dict[str, Any]]:
    """Protocol §8: one verdict per claim from its primary endpoints."""
    out = []
    for cid, text, prefixes in CLAIMS:
        rows = {k: v for k, v in ep["primary"].items() if any(k.startswith(p) for p in prefixes)}
        vs = [v["verdict"] for v in rows.values()]
        if cid in ("C1", "C2"):
            auroc_rows = [v["verdict"] for k, v in rows.items() if "AUROC" in k]
            if all(v == "reproduced" for v in vs):
                final = "reproduced"
            elif any(v == "not reproduced" for v in auroc_rows):
                final = "not reproduced"
            else:
                final = "inconclusive"
        else:
            final = vs[0] if vs else "not run"
        out.append({"claim": cid, "text": text, "verdict": final, "endpoints": list(rows)})
    return out


def headline_markdown(ep: dict[str, Any], n_splits: int, n_seeds: int) -> str:
    """The short table for the README / results.md: each claim, its primary differences, the verdict."""
    verdicts = {v["claim"]: v["verdict"] for v in claim_verdicts(ep)}
    rows = []
    for cid, _text, prefixes in CLAIMS:
        for k, v in ep["primary"].items():
            if any(k.startswith(p) for p in prefixes):
                rows.append([cid, k.split(": ", 1)[1] if ": " in k else k, _pts(v["overall"]["mean"]),
                             _ci(v["overall"]["ci95"]), v["verdict"], verdicts[cid]])
    note = (f"Points (AUROC/FPR95/accuracy × 100); positive = the paper's direction; mean over {n_splits} ID "
            f"split(s) of paired differences over {n_seeds} seeds; 95% CI per docs/evidence/protocol.md §7.")
    return note + "\n\n" + markdown_table(["claim", "difference", "mean", "95% CI", "endpoint", "claim verdict"],
                                            rows) + "\n"


def _pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def _ci(ci: Sequence[float]) -> str:
    return f"[{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"


def evidence_markdown(docs: Sequence[dict[str, Any]], ep: dict[str, Any], command: str,
                      not_run: Sequence[str] = ()) -> str:
    """The full tables: verdicts, primary and secondary endpoints, per split, absolute values, selection."""
    lines = ["# Evidence: pre-registered comparison (docs/evidence/protocol.md)", "", "Produced by:", "",
             "```bash", command, "```", "",
             f"Splits run: {', '.join(d['name'] for d in docs)}" + (f"; not run: {', '.join(not_run)}" if not_run
                                                                    else ""), ""]
    verdicts = [[v["claim"], v["text"], v["verdict"]] for v in claim_verdicts(ep)]
    lines += ["## Verdicts", "", markdown_table(["claim", "text", "verdict"], verdicts), ""]
    for block in ("primary", "secondary"):
        rows = [[k, _pts(v["overall"]["mean"]), _ci(v["overall"]["ci95"]), v["verdict"],
                 " ".join(_pts(m) for m in v["overall"]["split_means"])] for k, v in ep[block].items()]
        lines += [f"## {block.capitalize()} endpoints (points; positive = the paper's direction; 95% CI: the wider "
                  "of the two-stage bootstrap and the t-interval over split means)", "",
                  markdown_table(["endpoint", "mean", "95% CI", "verdict", "split means"], rows), ""]
    lines += ["## Absolute values (mean over seeds, per split; AUROC %)", "", _absolute(docs), ""]
    lines += ["## Near-OOD AUROC per category (mean over seeds; selected score parameters)", "", _per_category(docs),
              ""]
    lines += ["## Within-run statistics (seed 1)", "", _within(docs), ""]
    lines += ["## Selection (ID val only; HOCV AUROC ± SE of the chosen configuration; signal = 95% CI above 0.5)",
              "", _selection(docs), ""]
    return "\n".join(lines) + "\n"


def _mean_over(doc: dict[str, Any], arm: str, fn: Callable[[dict[str, Any]], float]) -> float:
    return float(np.mean([fn(doc["records"][f"{arm}/{s}"]) for s in _seeds(doc, arm)]))


def _absolute(docs: Sequence[dict[str, Any]]) -> str:
    rows = []
    for d in docs:
        sets = list(d["records"][next(iter(d["records"]))]["scores"]["msp"]["ood"])
        for arm in ARMS:
            if not _seeds(d, arm):
                continue
            keys = list(d["records"][f"{arm}/{_seeds(d, arm)[0]}"]["scores"])
            for key in keys:
                rows.append([d["name"], arm, key, f"{100 * _mean_over(d, arm, lambda r: r['id_accuracy']):.1f}",
                             f"{100 * _mean_over(d, arm, lambda r: r['covariate_accuracy']['mean']):.1f}"]
                            + [f"{100 * _mean_over(d, arm, partial(_auroc, key=key, oodset=s)):.1f}" for s in sets]
                            + [f"{100 * _mean_over(d, arm, partial(_fpr, key=key, oodset='near')):.1f}"])
    sets0 = list(docs[0]["records"][next(iter(docs[0]["records"]))]["scores"]["msp"]["ood"]) if docs else []
    return markdown_table(["split", "arm", "score", "ID acc", "cov acc", *[f"AUROC {s}" for s in sets0],
                           "FPR95 near"], rows)


def _group(rec: dict[str, Any], key: str, category: str) -> float:
    return float(rec["scores"][key]["by_group"]["near"][category])


def _per_category(docs: Sequence[dict[str, Any]]) -> str:
    rows = []
    for d in docs:
        first = d["records"][next(iter(d["records"]))]["scores"]["msp"]["by_group"].get("near", {})
        for arm in ARMS:
            if not _seeds(d, arm):
                continue
            for key in ("delta_energy", "energy", "mcm", "max_logit"):
                cats = [f"{c}: {100 * _mean_over(d, arm, partial(_group, key=key, category=c)):.1f}" for c in first]
                rows.append([d["name"], arm, key, "; ".join(cats)])
    return markdown_table(["split", "arm", "score", "AUROC per near category"], rows)


def _within(docs: Sequence[dict[str, Any]]) -> str:
    rows = []
    for d in docs:
        for arm, w in d["within_run"].items():
            for k in ("delta_energy-energy", "delta_energy-mcm"):
                rows.append([d["name"], arm, f"near AUROC {k.replace('-', ' − ')}", _pts(w[k]["diff"]),
                             _ci(w[k]["ci95"])])
            rows.append([d["name"], arm, "Spearman ΔE(sel) vs MSP / max-logit; ΔE(default) vs MSP / max-logit",
                         " / ".join(f"{w['spearman'][k]:.3f}" for k in ("selected:msp", "selected:max_logit",
                                                                          "default:msp", "default:max_logit")), ""])
        m = d.get("mcnemar") or {}
        for what in ("covariate", "id_test"):
            if what in m:
                r = m[what]
                rows.append([d["name"], "ebm vs coop", f"McNemar {what} (only ebm / only coop correct)",
                             f"{r['only_a']} / {r['only_b']}", f"p = {r['p_value']:.3g}"])
    return markdown_table(["split", "arm", "statistic", "value", "95% CI / p"], rows)


def _selection(docs: Sequence[dict[str, Any]]) -> str:
    rows = []
    for d in docs:
        for arm, s in d["selection"].items():
            loss = s["loss"] or {}
            for name, c in s["scores"].items():
                hidden = ("hocv_auroc", "hocv_se", "signal", "delta_energy_reset_logit", *LOSS_PARAMS)
                params = {k: v for k, v in c.items() if k not in hidden}
                rows.append([d["name"], arm, ", ".join(f"{k}={v}" for k, v in loss.items()) if name == "delta_energy"
                             else "", name, ", ".join(f"{k}={v}" for k, v in params.items()),
                             f"{100 * c['hocv_auroc']:.1f} ± {100 * c['hocv_se']:.1f}",
                             "yes" if c["signal"]["above_chance"] else "NO (at chance)"])
    return markdown_table(["split", "arm", "loss", "score", "selected", "HOCV AUROC", "signal"], rows)


def run_evidence(
    clip: LoadedClip, splits: Sequence[tuple[str, TaskData]], base: TrainConfig, cfg: EvidenceConfig,
    work: str | Path, results: str | Path, cache: FeatureCache, command: str, progress: bool = False,
    deadline: float | None = None, only: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Run every split (stopping before a new split once ``deadline`` — a ``time.time()`` — has passed)
    and write ``results/evidence/{splits,selection,endpoints}.json`` and ``evidence.md``.

    ``only`` runs just those splits (several processes can share the splits); the others are reused when
    they already finished with the same configuration and reported "not run" otherwise.
    """
    out, root = Path(results), Path(work)
    out.mkdir(parents=True, exist_ok=True)
    (out / "splits.json").write_text(json.dumps({n: list(t.class_names) for n, t in splits}, indent=2) + "\n",
                                     encoding="utf-8")
    docs, not_run = [], []
    for name, task in splits:
        finished = _finished(root / name, task, base, cfg)
        if finished is not None:
            docs.append(finished)
            continue
        if only is not None and name not in only:
            not_run.append(name)
            continue
        if deadline is not None and time.time() > deadline:
            logger.warning("deadline passed: split %s not run", name)
            not_run.append(name)
            continue
        docs.append(run_split(clip, name, task, base, cfg, root / name, cache, progress))
    (out / "selection.json").write_text(json.dumps({d["name"]: d["selection"] for d in docs}, indent=2) + "\n",
                                        encoding="utf-8")
    ep = endpoints(docs, cfg)
    doc = {"command": command, "config": json.loads(json.dumps(asdict(cfg))), "splits_run": [d["name"] for d in docs],
           "not_run": not_run, "verdicts": claim_verdicts(ep), "endpoints": ep,
           "seconds": {d["name"]: d["seconds"] for d in docs}}
    (out / "endpoints.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    (out / "evidence.md").write_text(evidence_markdown(docs, ep, command, not_run), encoding="utf-8")
    (out / "headline.md").write_text(headline_markdown(ep, len(docs), len(cfg.seeds)), encoding="utf-8")
    return doc

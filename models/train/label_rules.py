"""The default rule of label sets without examples, fitted on the bundle's own classes; and how well it and
calibration on examples hold the target ID pass rate (docs/label-sets.md).

Everything here runs the bundle's own graphs on ONNX Runtime (:mod:`models.text_runtime`,
:class:`models.label_set_create.VisionFeatures`), as the service does, on labelled ID images:

* :func:`fit_adhoc_rule`: for each K, many random K-class subsets of the bundle's classes; the gate
  scores of every ID validation image of a subset's classes, scored against that subset's label
  embeddings, are pooled, and the rule's threshold for K is their ``1 - target_tpr`` quantile.
* :func:`rule_pass_rates`: fresh random subsets and held-out (ID test) images; the ID pass rate of the
  rule's threshold per subset, against the target.
* :func:`examples_pass_rates`: a threshold calibrated on ``n`` random examples per label (from one
  image pool) and its ID pass rate on held-out images, over many draws; :func:`examples_needed_table`
  picks the fewest ``n`` per K that keeps the pass rate within ``tolerance`` of the target in
  ``coverage`` of the draws.

Item 5 of issue 17 (base-to-new evidence) reuses :class:`LabelledFeatures` (features of any labelled
images) with :func:`subset_scores` (any label set's gate scores, in either prompt mode).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.bundle import AdHocRule, Bundle, load_bundle, update_manifest
from models.calibration import CalibrationRecord
from models.label_set_create import VisionFeatures
from models.label_sets import rule_calibration
from models.prompts import PromptMode
from models.scoring_spec import gate_scores
from models.text_runtime import LabelScorer, TextEncoder
from models.train.data.folders import FolderIndex

__all__ = ["LabelledFeatures", "subset_scores", "fit_adhoc_rule", "rule_pass_rates", "examples_pass_rates",
           "examples_needed_table", "fit_and_measure"]

logger = logging.getLogger(__name__)

QUANTILE_LEVELS = np.linspace(0.0, 1.0, 101)


@dataclass(frozen=True)
class LabelledFeatures:
    """Image features of labelled images and their class names (any classes, the bundle's or new ones)."""

    features: np.ndarray  # (N, D) normalised image features (model.onnx's output)
    labels: np.ndarray  # (N,) index into names
    names: tuple[str, ...]  # class names
    source: str  # where the images came from

    @classmethod
    def of_index(cls, bundle: Bundle, index: FolderIndex, vision: VisionFeatures | None = None) -> LabelledFeatures:
        vision = vision or VisionFeatures(bundle)
        feats = vision.of_files(list(index.paths))
        return cls(feats, np.asarray(index.labels), tuple(index.class_names), str(index.root))

    def of_class(self, name: str) -> np.ndarray:
        return self.features[self.labels == self.names.index(name)]


def subset_scores(bundle: Bundle, scorer: LabelScorer, embeddings: dict[str, np.ndarray], data: LabelledFeatures,
                  labels: Sequence[str]) -> dict[str, np.ndarray]:
    """Gate scores (higher = ID) of each label's images under the label set ``labels``: label -> (n,)."""
    m = bundle.manifest
    gate = m.calibration.score if m.calibration is not None else "delta_energy"
    emb = np.stack([embeddings[label] for label in labels])  # (K, D)
    return {label: gate_scores(scorer.score(data.of_class(label), emb), gate, m.logit_scale, m.scores)
            for label in labels}


def _subsets(names: Sequence[str], k: int, n: int, rng: np.random.Generator) -> list[list[str]]:
    return [[names[i] for i in sorted(rng.choice(len(names), size=k, replace=False))] for _ in range(n)]


def fit_adhoc_rule(bundle: Bundle, data: LabelledFeatures, mode: PromptMode, *, ks: Sequence[int] | None = None,
                   subsets_per_k: int = 200, target_tpr: float = 0.95, seed: int = 0) -> AdHocRule:
    """The default rule for a prompt mode, on the bundle's classes (``data``: their ID validation images).

    Args:
        bundle: the bundle (text side).
        data: features of ID validation images of the bundle's classes.
        mode: prompt mode.
        ks: numbers of labels to fit (default: 2 .. the bundle's class count).
        subsets_per_k: random label sets per K.
        target_tpr: share of ID images that must pass.
        seed: the subsets' seed.
    """
    classes = [c for c in bundle.manifest.classes if c in data.names]
    ks = list(ks or range(2, len(classes) + 1))
    if ks[-1] > len(classes):
        raise ValueError(f"K up to {ks[-1]} needs that many classes with images; {len(classes)} have some")
    encoder, scorer = TextEncoder(bundle), LabelScorer(bundle)
    embeddings = dict(zip(classes, encoder.embed(classes, mode), strict=True))
    rng = np.random.default_rng(seed)
    thresholds, quantiles = [], []
    for k in ks:
        pooled = np.concatenate([s for subset in _subsets(classes, k, subsets_per_k, rng)
                                 for s in subset_scores(bundle, scorer, embeddings, data, subset).values()])
        thresholds.append(float(np.quantile(pooled, 1.0 - target_tpr)))
        quantiles.append(np.maximum.accumulate(np.quantile(pooled, QUANTILE_LEVELS)).tolist())
    m = bundle.manifest
    return AdHocRule(score=m.calibration.score if m.calibration is not None else "delta_energy",
                     target_tpr=target_tpr, ks=ks, thresholds=thresholds, quantiles=quantiles,
                     subsets_per_k=subsets_per_k, images=int(len(data.features)), data=data.source, seed=seed)


def _summary(errors: Sequence[float] | np.ndarray, tolerance: float) -> dict[str, float]:
    e = np.abs(np.asarray(errors, dtype=np.float64))
    return {"mean_abs_error": float(e.mean()), "p90_abs_error": float(np.quantile(e, 0.9)),
            "max_abs_error": float(e.max()), "within_tolerance": float((e <= tolerance + 1e-12).mean()),
            "draws": int(e.size)}


def rule_pass_rates(bundle: Bundle, rule: AdHocRule, data: LabelledFeatures, mode: PromptMode, *,
                    ks: Sequence[int] | None = None, subsets_per_k: int = 200, seed: int = 1,
                    tolerance: float = 0.02) -> dict[str, Any]:
    """The default rule's ID pass rate on held-out images (``data``), per K over fresh random subsets.

    Returns:
        ``{"per_k": {K: {"mean_pass_rate", "mean_abs_error", "p90_abs_error", "max_abs_error",
        "within_tolerance", "draws"}}, "data", "subsets_per_k", "seed"}`` (errors in pass-rate units).
    """
    names = [c for c in data.names if len(data.of_class(c))]
    ks = list(ks or rule.ks)
    encoder, scorer = TextEncoder(bundle), LabelScorer(bundle)
    embeddings = dict(zip(names, encoder.embed(names, mode), strict=True))
    rng = np.random.default_rng(seed)
    per_k: dict[str, Any] = {}
    for k in ks:
        threshold = rule_calibration(rule, k).threshold
        rates = []
        for subset in _subsets(names, k, subsets_per_k, rng):
            s = np.concatenate(list(subset_scores(bundle, scorer, embeddings, data, subset).values()))
            rates.append(float((s >= threshold).mean()))
        per_k[str(k)] = {"mean_pass_rate": float(np.mean(rates)), **_summary(np.asarray(rates) - rule.target_tpr,
                                                                               tolerance)}
    return {"per_k": per_k, "data": data.source, "subsets_per_k": subsets_per_k, "seed": seed}


def examples_pass_rates(bundle: Bundle, pool: LabelledFeatures, held_out: LabelledFeatures, mode: PromptMode, *,
                        ks: Sequence[int], ns: Sequence[int], draws: int = 100, target_tpr: float = 0.95,
                        seed: int = 2, tolerance: float = 0.02) -> dict[str, Any]:
    """Calibration on ``n`` examples per label: the ID pass rate of the fitted threshold on held-out images.

    Each draw takes a random K-label subset, ``n`` random images per label from ``pool`` (the examples), fits
    the threshold on their gate scores (:meth:`CalibrationRecord.from_scores`, as a label-set file does) and
    measures the pass rate on every ``held_out`` image of those labels.

    Returns:
        ``{"per_k": {K: {n: summary}}, ...}``; an ``n`` above the pool's smallest class is skipped.
    """
    names = [c for c in pool.names if c in held_out.names and len(pool.of_class(c)) and len(held_out.of_class(c))]
    encoder, scorer = TextEncoder(bundle), LabelScorer(bundle)
    embeddings = dict(zip(names, encoder.embed(names, mode), strict=True))
    smallest = min(len(pool.of_class(c)) for c in names)
    rng = np.random.default_rng(seed)
    per_k: dict[str, Any] = {}
    for k in ks:
        per_n: dict[str, Any] = {}
        for n in [n for n in ns if n <= smallest]:
            errors = []
            for subset in _subsets(names, k, draws, rng):
                emb = {c: embeddings[c] for c in subset}
                fit = subset_scores(bundle, scorer, emb, pool, subset)
                calib = np.concatenate([rng.choice(fit[c], size=n, replace=False) for c in subset])
                threshold = CalibrationRecord.from_scores(calib, target_tpr=target_tpr).threshold
                test = np.concatenate(list(subset_scores(bundle, scorer, emb, held_out, subset).values()))
                errors.append(float((test >= threshold).mean()) - target_tpr)
            per_n[str(n)] = _summary(errors, tolerance)
        per_k[str(k)] = per_n
    return {"per_k": per_k, "pool": pool.source, "held_out": held_out.source, "draws": draws, "seed": seed,
            "tolerance": tolerance}


def examples_needed_table(measured: dict[str, Any], coverage: float = 0.9) -> dict[str, int]:
    """Per K: the fewest n per label whose draws are within the tolerance in at least ``coverage`` of them,
    and so for every larger n measured (K absent: no n measured was enough)."""
    out = {}
    for k, per_n in measured["per_k"].items():
        ns = sorted(int(n) for n in per_n)
        ok = [n for i, n in enumerate(ns) if all(per_n[str(m)]["within_tolerance"] >= coverage for m in ns[i:])]
        if ok:
            out[k] = ok[0]
    return out


def fit_and_measure(bundle_dir: str | Path, val: FolderIndex, test: FolderIndex, *, example_pool: FolderIndex | None
                    = None, modes: Sequence[PromptMode] | None = None, subsets_per_k: int = 200, draws: int = 100,
                    example_ks: Sequence[int] = (2, 3, 5, 8), example_ns: Sequence[int] = (1, 2, 5, 10, 20, 40, 64),
                    coverage: float = 0.9, tolerance: float = 0.02, write: bool = True) -> dict[str, Any]:
    """Fit the default rule of every prompt mode on ID val, measure it and calibration on examples on ID test,
    and write the rules (with their measurements) into the bundle's manifest.

    Args:
        bundle_dir: the bundle (text side).
        val: ID validation images of the bundle's classes (fits the rule).
        test: ID test images (held out: every pass rate is measured on them).
        example_pool: where examples are drawn from (default: ``val``).
        modes: prompt modes (default: the bundle's).
        subsets_per_k: random label sets per K (rule fit and rule check).
        draws: draws per (K, n) of the examples measurement.
        example_ks: K of the examples measurement.
        example_ns: examples per label tried.
        coverage: share of draws that must be within ``tolerance`` for an n to count as enough.
        tolerance: pass-rate tolerance (0.02: ±2 points).
        write: update the manifest.

    Returns:
        The report (per mode: rule, its pass rates, the examples measurement and the table of n per K).
    """
    bundle = load_bundle(bundle_dir)
    info = bundle.text_side()
    vision = VisionFeatures(bundle)
    fit_data = LabelledFeatures.of_index(bundle, val, vision)
    test_data = LabelledFeatures.of_index(bundle, test, vision)
    pool = LabelledFeatures.of_index(bundle, example_pool, vision) if example_pool is not None else fit_data
    report: dict[str, Any] = {}
    rules = dict(info.rules)
    for mode_name in modes or info.prompt_modes:
        mode: PromptMode = "learned" if mode_name == "learned" else "zero-shot"
        rule = fit_adhoc_rule(bundle, fit_data, mode, subsets_per_k=subsets_per_k)
        checked = rule_pass_rates(bundle, rule, test_data, mode, subsets_per_k=subsets_per_k, tolerance=tolerance)
        ks = [k for k in example_ks if k <= rule.ks[-1]]
        examples = examples_pass_rates(bundle, pool, test_data, mode, ks=ks, ns=example_ns, draws=draws,
                                       tolerance=tolerance)
        table = examples_needed_table(examples, coverage)
        measured = {"rule_pass_rates": checked, "examples_per_label": table, "coverage": coverage,
                    "tolerance": tolerance, "examples": examples}
        rules[mode] = rule.model_copy(update={"measured": measured})
        report[mode] = {"rule": rules[mode].model_dump(exclude={"quantiles"})}
        logger.info("default rule (%s prompts): thresholds %s; examples per label needed: %s", mode,
                    dict(zip(rule.ks, np.round(rule.thresholds, 4).tolist(), strict=True)), table)
    if write:
        update_manifest(bundle_dir, text=info.model_copy(update={"rules": rules}))
    return report

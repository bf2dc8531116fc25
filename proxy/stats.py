"""The statistics of the pre-registered protocol (``docs/evidence/protocol.md`` §7–8).

- across seeds: mean and 95% t-interval of paired differences (``scipy.stats.ttest_1samp``);
- overall, across ID splits: the mean of the split means with the *wider* of a two-stage bootstrap
  (splits, then seeds — or image-bootstrap replicates for a deterministic arm) and a t-interval over
  the split means;
- within a run: a stratified paired bootstrap of an AUROC difference over images, and McNemar's
  exact test for paired accuracies (``scipy.stats.binomtest`` on the discordant pairs);
- verdicts: reproduced / not reproduced / inconclusive from a CI and a margin.

The image bootstrap computes AUROC from ranks (the Mann–Whitney statistic, ties at mid-ranks, equal
to ``sklearn.metrics.roc_auc_score``) because thousands of replicates through sklearn's input checks
would take minutes; a test compares the two.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

__all__ = [
    "rank_auroc",
    "t_interval",
    "paired_bootstrap_auroc",
    "two_stage_ci",
    "mcnemar_exact",
    "spearman",
    "verdict",
]


def rank_auroc(id_scores: np.ndarray, ood_scores: np.ndarray) -> float:
    """AUROC (ID positive) as the normalised Mann–Whitney U: ties count one half."""
    n1, n0 = len(id_scores), len(ood_scores)
    ranks = stats.rankdata(np.concatenate([id_scores, ood_scores]))  # (n1 + n0,) mid-ranks
    return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def t_interval(values: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """Mean and t-interval of paired differences (n = 1: the interval is the point)."""
    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean())
    if len(x) < 2 or float(np.std(x)) == 0.0:
        return {"mean": mean, "ci95": [mean, mean], "n": len(x), "sd": 0.0}
    ci = stats.ttest_1samp(x, 0.0).confidence_interval(level)
    return {"mean": mean, "ci95": [float(ci.low), float(ci.high)], "n": len(x), "sd": float(np.std(x, ddof=1))}


def paired_bootstrap_auroc(
    id_a: np.ndarray, ood_a: np.ndarray, id_b: np.ndarray, ood_b: np.ndarray, n_boot: int = 2000, seed: int = 0,
) -> dict[str, Any]:
    """AUROC(a) - AUROC(b) on the same images, with a stratified paired bootstrap.

    ID and OOD images are resampled separately (the numbers of each stay fixed) and the same draw is used
    for both scores, so the interval reflects the image sample, not the training seed.

    Returns:
        ``diff`` (point estimate), ``ci95`` (percentile) and ``replicates`` (the bootstrap differences).
    """
    rng = np.random.default_rng(seed)
    n, m = len(id_a), len(ood_a)
    reps = np.empty(n_boot)
    for b in range(n_boot):
        i, j = rng.integers(0, n, n), rng.integers(0, m, m)
        reps[b] = rank_auroc(id_a[i], ood_a[j]) - rank_auroc(id_b[i], ood_b[j])
    diff = rank_auroc(id_a, ood_a) - rank_auroc(id_b, ood_b)
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return {"diff": float(diff), "ci95": [float(lo), float(hi)], "replicates": reps}


def two_stage_ci(per_split: Sequence[Sequence[float]], n_boot: int = 10_000, seed: int = 12345) -> dict[str, Any]:
    """Overall mean over splits of the split means, with the wider of two 95% intervals (protocol §7).

    Args:
        per_split: for each split, its paired differences (one per seed; or, for a deterministic arm,
            image-bootstrap replicates around the split's point estimate, with the point first).
        n_boot: bootstrap replicates.
        seed: the bootstrap's generator seed.

    Returns:
        ``mean``, ``ci95`` (the wider), ``ci95_bootstrap``, ``ci95_t``, ``split_means``, ``n_splits``.
    """
    groups = [np.asarray(g, dtype=np.float64) for g in per_split if len(g)]
    if not groups:
        raise ValueError("no split has any difference")
    means = np.array([g.mean() for g in groups])
    rng = np.random.default_rng(seed)
    s = len(groups)
    reps = np.empty(n_boot)
    for b in range(n_boot):
        picks = rng.integers(0, s, s)
        reps[b] = np.mean([groups[p][rng.integers(0, len(groups[p]), len(groups[p]))].mean() for p in picks])
    boot = [float(v) for v in np.percentile(reps, [2.5, 97.5])]
    t = t_interval(means.tolist())["ci95"] if s > 1 else boot
    wider = boot if (boot[1] - boot[0]) >= (t[1] - t[0]) else t
    return {"mean": float(means.mean()), "ci95": wider, "ci95_bootstrap": boot, "ci95_t": t,
            "split_means": means.tolist(), "n_splits": s}


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, Any]:
    """McNemar's exact test of paired correctness (two-sided binomial test on the discordant pairs)."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    p = 1.0 if only_a + only_b == 0 else float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)
    return {"only_a": only_a, "only_b": only_b, "p_value": p, "acc_diff": float(a.mean() - b.mean())}


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation."""
    return float(stats.spearmanr(x, y).statistic)


def verdict(ci95: Sequence[float], margin: float, lower_needed: float = 0.0) -> str:
    """Protocol §8 for one difference oriented so that positive = the paper's direction.

    ``reproduced`` when the CI's lower bound exceeds ``lower_needed``; ``not reproduced`` when its upper
    bound is below ``margin`` (a gain of ``margin`` or more is excluded); otherwise ``inconclusive``.
    """
    lo, hi = float(ci95[0]), float(ci95[1])
    if lo > lower_needed:
        return "reproduced"
    if hi < margin:
        return "not reproduced"
    return "inconclusive"

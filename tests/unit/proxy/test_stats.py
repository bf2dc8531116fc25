"""The protocol's statistics against independent computations (sklearn, scipy, hand counts)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from proxy.stats import (
    mcnemar_exact,
    paired_bootstrap_auroc,
    rank_auroc,
    t_interval,
    two_stage_ci,
    verdict,
)

pytestmark = pytest.mark.unit


def test_rank_auroc_equals_sklearn_with_ties():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 40).astype(float), rng.integers(0, 4, 30).astype(float)  # many ties
    want = roc_auc_score(np.r_[np.ones(40), np.zeros(30)], np.r_[a, b])
    assert rank_auroc(a, b) == pytest.approx(want)


def test_t_interval_by_hand():
    x = [1.0, 2.0, 3.0, 4.0]
    res = t_interval(x)
    half = 3.182446305284263 * np.std(x, ddof=1) / 2  # t_{0.975, 3} * s / sqrt(4)
    assert res["mean"] == 2.5 and res["ci95"] == pytest.approx([2.5 - half, 2.5 + half])
    assert t_interval([0.3])["ci95"] == [0.3, 0.3]


def test_paired_bootstrap_is_zero_for_identical_scores_and_covers_a_real_gap():
    rng = np.random.default_rng(1)
    ida, ooda = rng.normal(1, 1, 200), rng.normal(0, 1, 150)
    same = paired_bootstrap_auroc(ida, ooda, ida, ooda, n_boot=200)
    assert same["diff"] == 0.0 and same["ci95"] == [0.0, 0.0]
    worse = paired_bootstrap_auroc(ida, ooda, ida + rng.normal(0, 2, 200), ooda + rng.normal(0, 2, 150), n_boot=300)
    assert worse["diff"] > 0 and worse["ci95"][0] > 0 and len(worse["replicates"]) == 300


def test_two_stage_interval_is_the_wider_and_centred_on_the_mean_of_split_means():
    groups = [[0.01, 0.02, 0.03], [0.05, 0.06], [0.0, 0.01, 0.02, 0.03]]
    res = two_stage_ci(groups, n_boot=2000, seed=0)
    assert res["mean"] == pytest.approx(np.mean([0.02, 0.055, 0.015]))
    width = res["ci95"][1] - res["ci95"][0]
    assert width >= res["ci95_t"][1] - res["ci95_t"][0] - 1e-12
    assert width >= res["ci95_bootstrap"][1] - res["ci95_bootstrap"][0] - 1e-12
    assert res["ci95"][0] <= res["mean"] <= res["ci95"][1]


def test_mcnemar_counts_discordant_pairs():
    a = np.array([1, 1, 1, 1, 1, 1, 0, 0], dtype=bool)
    b = np.array([1, 0, 0, 0, 0, 0, 0, 1], dtype=bool)
    res = mcnemar_exact(a, b)
    assert (res["only_a"], res["only_b"]) == (5, 1)
    assert res["p_value"] == pytest.approx(2 * (1 + 6) / 2**6)  # two-sided exact binomial, 1 of 6
    assert mcnemar_exact(a, a)["p_value"] == 1.0


def test_verdicts_follow_the_protocol():
    assert verdict([0.002, 0.03], 0.01) == "reproduced"
    assert verdict([-0.05, 0.004], 0.01) == "not reproduced"
    assert verdict([-0.2, -0.1], 0.01) == "not reproduced"  # a significant loss excludes the gain too
    assert verdict([-0.01, 0.05], 0.01) == "inconclusive"
    assert verdict([0.05, 0.2], 0.10, lower_needed=0.10) == "inconclusive"
    assert verdict([0.11, 0.2], 0.10, lower_needed=0.10) == "reproduced"

"""Evaluation metrics on tiny inputs whose values are known by hand; the report built from them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.calibration import CalibrationRecord
from models.scores import SCORE_NAMES, ScoreParams
from models.train.evaluate import SplitLogits, evaluate_logits, fpr_at_tpr, ood_metrics
from models.train.report import evaluation_markdown

pytestmark = pytest.mark.unit


def test_metrics_on_a_hand_computed_example():
    # ID 0.9, 0.8, 0.7 against OOD 0.75, 0.1: 5 of 6 (ID, OOD) pairs ordered correctly.
    m = ood_metrics(np.array([0.9, 0.8, 0.7]), np.array([0.1, 0.75]))
    assert m["auroc"] == pytest.approx(5 / 6)
    # Accepting every ID image needs the threshold at 0.7, which also accepts the OOD 0.75: FPR 1/2.
    assert m["fpr95"] == pytest.approx(0.5)
    # Ranked: ID, ID, OOD, ID, OOD -> AP = 1/3 * (1 + 1 + 3/4).
    assert m["aupr"] == pytest.approx((1 + 1 + 0.75) / 3)


def test_perfect_and_inverted_separation():
    ids, oods = np.linspace(1, 2, 20), np.linspace(-2, -1, 30)
    assert ood_metrics(ids, oods) == {"auroc": 1.0, "fpr95": 0.0, "aupr": 1.0}
    inverted = ood_metrics(-ids, -oods)
    assert inverted["auroc"] == 0.0 and inverted["fpr95"] == 1.0


def test_fpr_at_tpr_takes_the_first_threshold_reaching_the_level():
    # 20 ID scores 1..20, OOD 0.5 and 2.5: 95% TPR keeps ID >= 2 (19 of 20), OOD 2.5 passes -> 1/2.
    labels = np.r_[np.ones(20), np.zeros(2)]
    scores = np.r_[np.arange(1, 21, dtype=float), [0.5, 2.5]]
    assert fpr_at_tpr(labels, scores) == pytest.approx(0.5)
    assert fpr_at_tpr(labels, scores, tpr_level=1.0) == pytest.approx(0.5)
    assert fpr_at_tpr(labels, scores, tpr_level=0.9) == pytest.approx(0.0)


def _split() -> SplitLogits:
    g = torch.Generator().manual_seed(0)
    id_logits = torch.randn(12, 3, generator=g) * 5
    id_labels = id_logits.argmax(dim=-1)
    id_labels[:2] = (id_labels[:2] + 1) % 3  # 10 of 12 correct
    ood = {"flat": torch.randn(6, 3, generator=g), "nested": torch.randn(4, 3, generator=g)}
    cov = {"sketch": (id_logits[:4], id_logits[:4].argmax(dim=-1))}
    groups = {"nested": ["a", "a", "b", "b"], "flat": [""] * 6}
    return SplitLogits(id_logits, id_labels, ood, cov, groups)


def test_evaluate_logits_summary_and_threshold_rates():
    split = _split()
    params = ScoreParams(delta_energy_top_c=2)
    calib = CalibrationRecord.from_scores(np.array([0.0, 0.5, 1.0, 1.5]), score="delta_energy")
    ev = evaluate_logits(split, 10.0, params, ["a", "b", "c"], calib)
    s = ev.summary
    assert s["id_accuracy"] == pytest.approx(10 / 12)
    assert s["covariate_accuracy"] == {"sketch": 1.0, "mean": 1.0}
    assert set(s["scores"]) == {*SCORE_NAMES, "delta_energy@c=1,T=1"}
    de_id = ev.id_scores["delta_energy"]
    thr = s["at_threshold"]
    assert thr["threshold"] == calib.threshold
    assert thr["id_pass_rate"] == pytest.approx(float((de_id >= calib.threshold).mean()))
    flat = ev.ood_scores["delta_energy"]["flat"]
    assert thr["ood_reject_rate"]["flat"] == pytest.approx(float((flat < calib.threshold).mean()))
    assert set(thr["ood_reject_rate_by_group"]) == {"nested"}
    assert set(thr["ood_reject_rate_by_group"]["nested"]) == {"a", "b"}
    assert s["scores"]["msp"]["ood"]["flat"] == ood_metrics(ev.id_scores["msp"], ev.ood_scores["msp"]["flat"])


def test_markdown_has_one_row_per_method_and_score():
    import re

    ev = evaluate_logits(_split(), 10.0, ScoreParams(delta_energy_top_c=3), ["a", "b", "c"])
    md = evaluation_markdown({"zero-shot": ev, "ebm": ev}, command="deltagate evaluate ...")
    assert "deltagate evaluate ..." in md
    rows = [line for line in md.splitlines() if re.match(r"^\| (zero-shot|ebm) +\|", line)]
    # per method: score rows (+1 METHOD.md default ΔEnergy row, since c=3) in the headline and the
    # per-category table (the nested set has groups), plus one covariate row
    assert len(rows) == 2 * (2 * (len(SCORE_NAMES) + 1) + 1)
    assert "delta_energy (c=3, T=1, r=0)" in md and "delta_energy (c=1, T=1) [METHOD.md default]" in md
    assert "energy (T=1)" in md and "mcm (tau=1)" in md


def test_reference_rows_appear_only_when_the_parameters_differ_from_the_specification():
    from models.train.evaluate import score_variants

    assert [k for k, _, _ in score_variants(ScoreParams())] == list(SCORE_NAMES)
    with_default_row = [*SCORE_NAMES, "delta_energy@c=1,T=1"]
    assert [k for k, _, _ in score_variants(ScoreParams(delta_energy_temperature=20.0))] == with_default_row
    assert [k for k, _, _ in score_variants(ScoreParams(delta_energy_reset="min"))] == with_default_row
    keys = [k for k, _, _ in score_variants(ScoreParams(energy_temperature=20.0, mcm_tau=0.1))]
    assert keys == [*SCORE_NAMES, "energy@T=1", "mcm@tau=1"]
    ev = evaluate_logits(_split(), 10.0, ScoreParams(delta_energy_temperature=20.0), ["a", "b", "c"])
    # The reference row is the score with METHOD.md's defaults, computed independently here.
    from models.scores import delta_energy

    expected = delta_energy(_split().id_test).numpy()
    np.testing.assert_allclose(ev.id_scores["delta_energy@c=1,T=1"], expected, rtol=1e-6)


def test_energy_and_delta_energy_use_their_own_temperatures():
    from models.scores import delta_energy, energy

    split = _split()
    params = ScoreParams(delta_energy_temperature=5.0, energy_temperature=2.0)
    ev = evaluate_logits(split, 10.0, params, ["a", "b", "c"])
    np.testing.assert_allclose(ev.id_scores["energy"], -energy(split.id_test, 2.0).numpy(), rtol=1e-6)
    np.testing.assert_allclose(ev.id_scores["delta_energy"], delta_energy(split.id_test, temperature=5.0).numpy(),
                               rtol=1e-6)


def test_per_category_metrics_and_each_score_at_its_own_threshold():
    split = _split()
    g = torch.Generator().manual_seed(1)
    split.id_val = torch.randn(40, 3, generator=g) * 5
    ev = evaluate_logits(split, 10.0, ScoreParams(), ["a", "b", "c"])
    msp = ev.summary["scores"]["msp"]
    # per sub-folder of the nested set: the ID scores against that group's images only
    nested = ev.ood_scores["msp"]["nested"]
    assert msp["ood_by_group"]["nested"]["a"] == ood_metrics(ev.id_scores["msp"], nested[:2])
    assert "flat" not in msp["ood_by_group"]
    # the own threshold is the 5% quantile of the score on ID val, applied to ID test and each OOD set
    from models.scores import id_score

    val = id_score("msp", split.id_val, 10.0).numpy()
    thr = float(np.quantile(val, 0.05))
    own = msp["at_own_threshold"]
    assert own["threshold"] == pytest.approx(thr)
    assert own["id_pass_rate"] == pytest.approx(float((ev.id_scores["msp"] >= thr).mean()))
    assert own["ood_reject_rate"]["flat"] == pytest.approx(float((ev.ood_scores["msp"]["flat"] < thr).mean()))
    assert "mean" not in msp  # near and far OOD are never averaged together

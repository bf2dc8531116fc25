"""The guard against a useless model: its statistics against scipy's, and its verdicts on clear cases."""

from __future__ import annotations

import pytest

from models.quality import (
    MIN_GATE_AUROC,
    accuracy_check,
    auroc_p_above_half,
    binomial_p_above_chance,
    bundle_checks,
    evaluation_checks,
    gate_check,
    weights_check,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("correct", "n", "chance"), [(12, 60, 0.2), (20, 60, 0.2), (3, 4, 0.5), (0, 10, 0.1),
                                                      (290, 1000, 0.25), (1000, 1000, 0.001)])
def test_binomial_p_value_matches_scipy(correct: int, n: int, chance: float) -> None:
    from scipy.stats import binomtest

    expected = binomtest(correct, n, chance, alternative="greater").pvalue
    assert binomial_p_above_chance(correct, n, chance) == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_auroc_p_value_is_the_mann_whitney_normal_approximation() -> None:
    from scipy.stats import norm

    n_id, n_ood, auroc = 60, 40, 0.62
    se = ((n_id + n_ood + 1) / (12 * n_id * n_ood)) ** 0.5
    assert auroc_p_above_half(auroc, n_id, n_ood) == pytest.approx(norm.sf((auroc - 0.5) / se))
    assert auroc_p_above_half(0.5, n_id, n_ood) == pytest.approx(0.5)


@pytest.mark.parametrize(("accuracy", "n", "k", "ok", "needle"), [
    (0.233, 60, 5, False, "near chance"),          # the tiny CLIP on clipart: skill 0.04
    (0.2, 60, 5, False, "near chance"),            # random weights
    (0.9, 60, 5, True, "above chance"),
    (0.75, 4, 2, False, "cannot be told from guessing"),  # skill 0.5, but 3 of 4 is luck often enough
    (0.35, 1000, 100, True, "above chance"),       # far above 1/100
    (0.105, 10000, 100, False, "near chance"),     # significant, but skill < 0.1
])
def test_accuracy_check(accuracy: float, n: int, k: int, ok: bool, needle: str) -> None:
    check = accuracy_check(accuracy, n, k)
    assert check.ok is ok and needle in check.message and f"chance {1 / k:.3f}" in check.message


def test_gate_check_needs_one_set_separated_beyond_chance() -> None:
    bad = gate_check({"near": 0.52, "far": 0.55}, 60, {"near": 50, "far": 50}, "delta_energy")
    assert bad is not None and not bad.ok and "cannot separate anything" in bad.message
    small = gate_check({"near": 0.7}, 5, {"near": 3}, "delta_energy")  # 0.7 on 5 vs 3 images: luck
    assert small is not None and not small.ok
    good = gate_check({"near": 0.55, "far": 0.9}, 60, {"near": 50, "far": 50}, "energy")
    assert good is not None and good.ok and "far 0.900" in good.message
    assert gate_check({}, 60, {}, "delta_energy") is None  # no OOD set: nothing to say
    assert MIN_GATE_AUROC == 0.6


def test_weights_check_warns_on_random_weights_only() -> None:
    assert not weights_check(None).ok and "--pretrained none" in weights_check(None).message
    assert weights_check("openai").ok


def test_evaluation_checks_read_an_evaluation_summary() -> None:
    summary = {"id_accuracy": 0.21, "counts": {"id_test": 60, "ood/noise": 40},
               "scores": {"delta_energy": {"ood": {"noise": {"auroc": 0.51}}}}}
    checks = {c.name: c for c in evaluation_checks(summary, 5, "delta_energy")}
    assert not checks["accuracy"].ok and "ID test accuracy 0.210" in checks["accuracy"].message
    assert not checks["gate"].ok


def test_bundle_checks_read_the_bundles_own_records(tiny_bundle) -> None:
    from models.bundle import load_bundle
    from models.quality import ValidationRecord

    manifest = load_bundle(tiny_bundle).manifest
    assert [(c.name, c.ok) for c in bundle_checks(manifest)] == [("weights", False)]  # random micro CLIP
    trained = manifest.model_copy(update={"validation": ValidationRecord(accuracy=0.25, images=40)})
    assert [(c.name, c.ok) for c in bundle_checks(trained)] == [("weights", False), ("accuracy", False)]

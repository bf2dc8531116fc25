"""The label-set evidence's drawing and aggregation (proxy/label_set_evidence.py) on tiny synthetic inputs."""

from __future__ import annotations

import numpy as np
import pytest

from proxy.label_set_evidence import MODES, PROTOCOL, aggregate, draw_label_sets, pass_rate_error, render_table


def _mode(acc: float, near_de: float, near_other: float, far: float, err: float) -> dict:
    srcs = ["rule", *map(str, PROTOCOL["examples_per_label"])]
    return {
        "id_accuracy": acc,
        "near_auroc": {s: (near_de if s == "delta_energy" else near_other) for s in PROTOCOL["scores"]},
        "far_auroc": dict.fromkeys(PROTOCOL["scores"], far),
        "pass_error": dict.fromkeys(srcs, -err),
        "pass_abs_error": dict.fromkeys(srcs, err),
        "draws_within": dict.fromkeys(srcs[1:], float(err <= PROTOCOL["tolerance"])),
    }


def _sets(n: int, rng: np.random.Generator) -> list[dict]:
    out = []
    for _ in range(n):
        gap = 0.05 + rng.normal(0, 0.005)  # ΔEnergy beats every baseline by ~0.05 near
        learned = _mode(0.9, 0.9, 0.9 - gap, 0.99, 0.001 + abs(rng.normal(0, 0.001)))
        zero = _mode(0.8 + rng.normal(0, 0.005), 0.9, 0.9 - gap, 0.99, 0.10 + rng.normal(0, 0.005))
        out.append({"labels": ["a", "b", "c"], "k": 3, "modes": {"learned": learned, "zero-shot": zero}})
    return out


def test_aggregate_means_and_verdicts() -> None:
    per_set = _sets(12, np.random.default_rng(0))
    agg = aggregate(per_set)
    q1 = {(r["ood"], r["baseline"]): r for r in agg["q1_delta_energy_vs_baselines"]}
    expected_gap = np.mean([s["modes"]["learned"]["near_auroc"]["delta_energy"]
                            - s["modes"]["learned"]["near_auroc"]["energy"] for s in per_set])
    assert q1[("near", "energy")]["mean"] == pytest.approx(expected_gap)
    assert q1[("near", "mcm")]["verdict"] == "better"
    assert q1[("far", "energy")]["verdict"] == "not better"  # zero difference: a 0.01 gain is excluded
    q2 = {r["endpoint"]: r for r in agg["q2_learned_vs_zero_shot"]}
    assert q2["id_accuracy"]["mean"] == pytest.approx(
        np.mean([0.9 - s["modes"]["zero-shot"]["id_accuracy"] for s in per_set]))
    assert q2["id_accuracy"]["verdict"] == "learned helps"
    assert q2["far_auroc"]["verdict"] == "no difference"
    q3 = {(r["mode"], r["threshold"]): r for r in agg["q3_pass_rate_error"]}
    assert len(q3) == len(MODES) * (1 + len(PROTOCOL["examples_per_label"]))
    assert q3[("learned", "rule")]["verdict"] == "within ±2 points"
    assert q3[("learned", "rule")]["sets_within"] == 1.0
    assert q3[("zero-shot", "5")]["verdict"] == "outside ±2 points"
    assert q3[("zero-shot", "5")]["signed"]["mean"] < 0
    assert q3[("zero-shot", "5")]["draws_within"] == 0.0 and q3[("learned", "5")]["draws_within"] == 1.0
    assert "learned helps" in render_table({"command": "x", "aggregate": agg})


def test_learned_hurts_and_inconclusive() -> None:
    per_set = _sets(12, np.random.default_rng(1))
    for i, s in enumerate(per_set):  # learned now clearly worse in accuracy; near AUROC noisy around 0
        s["modes"]["learned"]["id_accuracy"] = 0.7
        s["modes"]["learned"]["near_auroc"]["delta_energy"] = 0.9 + (0.05 if i % 2 else -0.05)
    q2 = {r["endpoint"]: r["verdict"] for r in aggregate(per_set)["q2_learned_vs_zero_shot"]}
    assert q2["id_accuracy"] == "learned hurts"
    assert q2["near_auroc"] == "inconclusive"


def test_draws_and_pass_rate() -> None:
    cats = [f"c{i}" for i in range(20)]
    sets = draw_label_sets(cats, 6, (3, 5, 8), seed=17)
    assert [len(s) for s in sets] == [3, 5, 8, 3, 5, 8]
    assert all(len(set(s)) == len(s) and set(s) <= set(cats) for s in sets)
    assert sets == draw_label_sets(list(reversed(cats)), 6, (3, 5, 8), seed=17)  # order of the pool is irrelevant
    assert pass_rate_error(np.array([0.0, 1.0, 2.0, 3.0]), 1.0, 0.95) == pytest.approx(-0.2)

"""Selection rules (protocol §5) on hand-made inputs: search spaces, the 1-SE rule, HOCV partitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.scores import ScoreParams, id_score
from models.train.metrics import auroc
from models.train.selection import (
    Candidate,
    FoldLogits,
    HOCVConfig,
    changed_from_default,
    criterion,
    hocv_partitions,
    merge_selected,
    one_se_pick,
    score_space,
    select_on_ood_val,
    select_scores,
    signal_check,
)

pytestmark = pytest.mark.unit


def test_search_spaces_start_with_the_method_default_and_cover_the_protocol():
    de = score_space("delta_energy", 17.0, 8)
    assert de[0] == {"delta_energy_temperature": 1.0, "delta_energy_top_c": 1, "delta_energy_reset": "value",
                     "delta_energy_reset_logit": 0.0}
    assert {p["delta_energy_temperature"] for p in de} == {1.0, 3.0, 10.0, 17.0, 30.0, 100.0}  # 1 .. logit scale .. 100
    assert {p["delta_energy_top_c"] for p in de} == {1, 2, 4, 8}
    assert {p["delta_energy_reset"] for p in de} == {"value", "min", "mean"}
    assert len(de) == 6 * 4 * 3
    assert score_space("energy", 100.0, 8)[0] == {"energy_temperature": 1.0}
    assert len(score_space("energy", 100.0, 8)) == 5  # the scale 100 is already in the grid
    assert score_space("msp", 17.0, 8) == [{}]
    with pytest.raises(KeyError, match="valid"):
        score_space("odin", 1.0, 3)


def test_changes_are_counted_from_the_method_defaults():
    assert changed_from_default({"delta_energy_temperature": 1.0, "delta_energy_top_c": 1}) == 0
    assert changed_from_default({"delta_energy_temperature": 30.0, "delta_energy_top_c": 2,
                                 "delta_energy_reset": "min"}) == 3
    assert changed_from_default({"ebm_weight": 0.1, "ce_on": "edited"}, {"ebm_weight": 1.0, "ce_on": "edited"}) == 1


def test_one_standard_error_rule_prefers_the_simplest_within_one_se():
    best = Candidate({"delta_energy_temperature": 30.0}, [0.80, 0.84, 0.82, 0.86], changed=1)  # mean 0.83, SE ~0.013
    close = Candidate({"delta_energy_temperature": 1.0}, [0.82, 0.82, 0.82, 0.82], changed=0)  # within one SE, default
    far = Candidate({"delta_energy_temperature": 1.0, "delta_energy_top_c": 1}, [0.70, 0.70, 0.70, 0.70], changed=0)
    assert one_se_pick([best, close, far]) is close
    assert one_se_pick([best, far]) is best  # the default is more than one SE below
    assert one_se_pick([Candidate({}, [0.9], changed=2, se=0.0), Candidate({}, [0.95], changed=2, se=0.0)]).mean == 0.95


def test_hocv_partitions_hold_every_class_out_once_per_repeat():
    parts = hocv_partitions(8, HOCVConfig(folds=4, repeats=2))
    assert len(parts) == 8
    for r in (0, 1):
        held = sorted(c for rr, h in parts if rr == r for c in h)
        assert held == list(range(8)) and all(len(h) == 2 for rr, h in parts if rr == r)
    assert [h for r, h in parts if r == 0] != [h for r, h in parts if r == 1]  # different permutations
    assert parts == hocv_partitions(8, HOCVConfig(folds=4, repeats=2))  # seeded


def _folds() -> list[FoldLogits]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(4):
        ids = torch.randn(30, 3, generator=g) * 4
        ids[torch.arange(30), torch.arange(30) % 3] += 6  # ID images match one class sharply
        out.append(FoldLogits(ids, torch.arange(30) % 3, torch.randn(20, 3, generator=g) * 4, 10.0))
    return out


def test_criterion_is_the_auroc_of_kept_vs_held_out_val_images():
    folds = _folds()
    p = ScoreParams(delta_energy_temperature=3.0)
    got = criterion(folds, "delta_energy", p)
    want = [auroc(id_score("delta_energy", f.id_logits, 10.0, p).numpy(),
                  id_score("delta_energy", f.ood_logits, 10.0, p).numpy()) for f in folds]
    assert got == pytest.approx(want)
    sel = select_scores(folds, 3)
    assert set(sel) == {"msp", "max_logit", "energy", "mcm", "delta_energy"}
    assert sel["energy"].chosen in sel["energy"].candidates
    merged = merge_selected(sel)
    assert merged.energy_temperature == sel["energy"].chosen.params["energy_temperature"]
    assert merged.delta_energy_temperature == sel["delta_energy"].chosen.params["delta_energy_temperature"]
    assert signal_check(sel["energy"].chosen.aurocs)["above_chance"]  # ID is clearly separable here


def test_signal_check_flags_a_criterion_at_chance():
    assert not signal_check([0.49, 0.52, 0.50, 0.51, 0.48])["above_chance"]
    assert signal_check([0.71, 0.69, 0.72, 0.70])["above_chance"]


def test_selection_on_a_user_ood_val_set():
    f = _folds()[0]
    sel = select_on_ood_val(f.id_logits, f.ood_logits, 10.0, names=("energy", "msp"), n_boot=30)
    assert sel["energy"].criterion == "ood_val"
    chosen = sel["energy"].chosen
    p = ScoreParams(energy_temperature=chosen.params["energy_temperature"])
    assert chosen.mean == pytest.approx(auroc(id_score("energy", f.id_logits, 10.0, p).numpy(),
                                              id_score("energy", f.ood_logits, 10.0, p).numpy()))
    assert all(c.std_error > 0 for c in sel["energy"].candidates)
    assert np.isfinite(sel["msp"].chosen.mean)

"""The faithfulness check: its column-selection shortcut agrees with the zero-shot evaluation, verdicts follow
the numbers, and the page names every fact and the command."""

from __future__ import annotations

import json

import pytest
import torch

from models.clip_loading import load_clip
from proxy.faithfulness import FACTS, SCORES, TEMPLATE, check_faithfulness, write_faithfulness
from proxy.world.splits import world_split
from proxy.world.synth import generate_world
from proxy.zero_shot import evaluate_zero_shot
from tests.proxy_support import TINY_WORLD

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    world = tmp_path_factory.mktemp("world") / "w"
    generate_world(TINY_WORLD, world)
    torch.manual_seed(0)
    clip = load_clip("tiny-clip")  # random weights: the numbers mean nothing, the bookkeeping is checked
    return world, clip, check_faithfulness(clip, world, label="random", n_splits=3)


def test_numbers_equal_the_zero_shot_evaluation_on_val(setup):
    world, clip, report = setup
    zs = evaluate_zero_shot(clip, world_split(world).task("val"), [TEMPLATE], probe=False)
    d = report.default_split
    assert d["id_accuracy"] == pytest.approx(zs.id_accuracy)
    for score in ("msp", "max_logit", "energy", "mcm", "delta_energy"):
        for ood in ("near", "near_hard", "far_noise", "far_textures"):
            assert d["ood"][ood][score]["auroc"] == pytest.approx(zs.auroc[score][ood], abs=1e-6), (score, ood)
    assert d["covariate_accuracy"] == pytest.approx(zs.covariate_accuracy)


def test_energy_on_cosines_is_energy_at_the_logit_scale(setup):
    _, _, report = setup
    z = torch.randn(5, 4) * 20
    from models.scores import energy

    assert torch.allclose(SCORES["energy_cos"](z, 20.0), -energy(z, 20.0) / 20.0, atol=1e-5)


def test_every_fact_has_a_verdict_that_follows_its_numbers(setup):
    _, _, report = setup
    assert [f["key"] for f in report.facts] == [f.key for f in FACTS]
    assert {f["verdict"] for f in report.facts} <= {"holds", "does not hold"}
    d = report.default_split["ood"]["near"]
    verdict = {f["key"]: f["verdict"] for f in report.facts}
    mcm_wins = d["mcm"]["auroc"] >= d["max_logit"]["auroc"] and report.random_splits["orderings"][
        "mcm>=max_logit"] >= 0.5
    assert verdict["mcm_vs_max_cosine"] == ("holds" if mcm_wins else "does not hold")
    assert verdict["logit_scale"] == ("holds" if abs(report.logit_scale - 100) < 10 else "does not hold")
    assert len(report.random_splits["splits"]) == 3
    assert set(report.default_split["near_per_category"]) == set(world_split(setup[0]).near_classes)


def test_the_page_and_json_are_written(setup, tmp_path):
    _, _, report = setup
    write_faithfulness([report], tmp_path / "f.json", tmp_path / "f.md", "deltagate data faithfulness ...")
    page = (tmp_path / "f.md").read_text()
    assert "deltagate data faithfulness ..." in page
    assert all(f.fact in page for f in FACTS) and "near_hard" in page
    doc = json.loads((tmp_path / "f.json").read_text())
    assert doc["models"][0]["model"] == "random" and doc["models"][0]["facts"] == report.facts

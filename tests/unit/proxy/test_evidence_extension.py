"""The evidence extension (docs/evidence/protocol-extension.md): its verdict words at their boundaries, the new
splits (disjoint, nested), endpoints of a zero-shot-only run, the pretraining seed in every record, and the
combined table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proxy.evidence import EvidenceConfig, claim_verdicts, endpoints
from proxy.evidence_extension import (
    ExtensionConfig,
    backbone_differences,
    combine,
    equivalence_verdict,
    extension_report,
    extension_split_classes,
    size_verdict,
)
from proxy.evidence_extension import claim_verdicts as ext_claim_verdicts
from proxy.pretrain_tiny import checkpoint_seed
from proxy.world.splits import random_id_splits
from proxy.world.synth import generate_world
from tests.proxy_support import TINY_WORLD

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("ci", "word"), [
    ((0.001, 0.05), "better"), ((0.001, 0.03), "better"), ((0.001, 0.029), "small gain"),
    ((-0.029, 0.029), "equivalent"), ((-0.03, 0.01), "inconclusive"), ((-0.01, 0.03), "inconclusive"),
    ((-0.029, -0.001), "small loss"), ((-0.03, -0.001), "worse"), ((-0.2, 0.2), "inconclusive"),
])
def test_equivalence_words_at_the_margin(ci, word):
    assert equivalence_verdict(ci, 0.03) == word


@pytest.mark.parametrize(("ci", "word"), [
    ((0.10, 0.2), "size reached"), ((0.05, 0.0999), "size excluded"), ((-0.3, -0.1), "size excluded"),
    ((-0.05, 0.10), "size not excluded"), ((0.0999, 0.3), "size not excluded"),
])
def test_size_words(ci, word):
    assert size_verdict(ci, 0.10) == word


def _ep(mean: float, lo: float, hi: float, verdict: str, n: int = 20) -> dict:
    return {"overall": {"mean": mean, "ci95": [lo, hi], "n_splits": n}, "verdict": verdict}


def _full(c2_energy, c2_mcm, c3, c4, c5) -> dict:
    return {"primary": {"P2 ebm: ΔE − energy, near AUROC": c2_energy, "P2 ebm: ΔE − mcm, near AUROC": c2_mcm,
                        "P3: ebm − coop, hard-near AUROC of delta_energy": c3,
                        "P4: ebm − coop, covariate accuracy": c4,
                        "C5: ebm+ΔE − coop+(its HOCV-best baseline score), near AUROC": c5}}


def test_claim_verdicts_apply_the_registered_margins():
    zs = {"primary": {"P1 zero-shot: ΔE − energy, near AUROC": _ep(0.0, -0.01, 0.01, "inconclusive", 40),
                      "P1 zero-shot: ΔE − mcm, near AUROC": _ep(0.1, 0.05, 0.15, "reproduced", 40)}}
    full = _full(_ep(0.05, 0.02, 0.08, "reproduced"), _ep(0.05, 0.01, 0.09, "reproduced"),
                 _ep(0.02, -0.01, 0.05, "inconclusive"), _ep(0.0, -0.002, 0.004, "not reproduced"),
                 _ep(0.05, 0.01, 0.12, "inconclusive"))
    v = {x["claim"]: x for x in ext_claim_verdicts(zs, full, ExtensionConfig())}
    assert v["C1"]["verdict"] == "not reproduced" and v["C1"]["vs_energy"]["equivalence"] == "equivalent"
    assert v["C2"]["verdict"] == "reproduced" and v["C2"]["vs_energy"]["equivalence"] == "better"
    assert v["C3"]["verdict"] == "inconclusive" and v["C3"]["difference"]["size"] == "size excluded"
    assert v["C4"]["verdict"] == "not reproduced"
    assert v["C5"]["verdict"] == "inconclusive" and v["C5"]["difference"]["size"] == "size not excluded"
    # ΔE better than energy is not enough when MCM is not beaten
    full["primary"]["P2 ebm: ΔE − mcm, near AUROC"] = _ep(0.0, -0.05, 0.005, "not reproduced")
    assert next(x for x in ext_claim_verdicts(zs, full, ExtensionConfig()) if x["claim"] == "C2")["verdict"] == (
        "not reproduced")
    none = {x["claim"]: x["verdict"] for x in ext_claim_verdicts(zs, None, ExtensionConfig())}
    assert none == {"C1": "not reproduced", "C2": "not run", "C3": "not run", "C4": "not run", "C5": "not run"}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world") / "w"
    generate_world(TINY_WORLD, out)
    return out


def test_extension_splits_avoid_the_original_ones_and_nest(world):
    original = [TINY_WORLD.id_classes, *random_id_splits(TINY_WORLD.categories, 4, 2, 20261201)]
    drawn = random_id_splits(TINY_WORLD.categories, 4, 6, 7)
    excluded = [*original, drawn[1]]  # a drawn split that is an original one is skipped, not renamed
    long = extension_split_classes(world, 5, 7, excluded, n_classes=4)
    short = extension_split_classes(world, 3, 7, excluded, n_classes=4)
    assert [n for n, _ in long] == [f"ext-{j}" for j in range(1, 6)] and long[:3] == short
    assert not {frozenset(s) for _, s in long} & {frozenset(s) for s in excluded}
    assert long[0][1] == drawn[0] and long[1][1] == drawn[2]


def _record(auroc: dict[str, float]) -> dict:
    return {"id_accuracy": 0.9, "covariate_accuracy": {"mean": 0.8},
            "scores": {k: {"ood": {"near": {"auroc": a, "fpr95": 1 - a}}, "by_group": {}} for k, a in auroc.items()}}


def _zs_doc(name: str, de: float) -> dict:
    rec = _record({"delta_energy": de, "energy": 0.9, "mcm": 0.8, "max_logit": 0.9, "msp": 0.7,
                   "delta_energy@c=1,T=1": de - 0.2, "energy@T=1": 0.9})
    return {"name": name, "records": {"zero-shot/0": rec}, "zero_shot_replicates": {}, "hard_set": "near",
            "selection": {}}


def test_endpoints_of_a_zero_shot_only_run_have_c1_alone():
    docs = [_zs_doc(f"ext-{j}", 0.9 + 0.01 * (j % 3 - 1)) for j in range(1, 7)]
    ep = endpoints(docs, EvidenceConfig(n_boot_overall=200))
    assert ep["primary"] and all(k.startswith("P1 zero-shot") for k in ep["primary"])
    assert ep["primary"]["P1 zero-shot: ΔE − energy, near AUROC"]["overall"]["n_splits"] == 6
    verdicts = {v["claim"]: v["verdict"] for v in claim_verdicts(ep)}
    assert verdicts["C1"] in ("reproduced", "not reproduced", "inconclusive")
    assert [verdicts[c] for c in ("C2", "C3", "C4", "C5")] == ["not run"] * 4  # not "reproduced" by vacuity


def test_checkpoint_seed_reads_the_report(tmp_path):
    ckpt = tmp_path / "tiny-clip.safetensors"
    assert checkpoint_seed(ckpt) is None
    ckpt.with_suffix(".json").write_text(json.dumps({"config": {"seed": 1}}))
    assert checkpoint_seed(ckpt) == 1


def _write_backbone(root: Path, seed: int, zs_ci, full: dict | None, zs_run: int = 1, zs_of: int = 1) -> None:
    zs = {"primary": {"P1 zero-shot: ΔE − energy, near AUROC": _ep(sum(zs_ci) / 2, *zs_ci, "inconclusive", 40),
                      "P1 zero-shot: ΔE − mcm, near AUROC": _ep(0.1, 0.05, 0.15, "reproduced", 40)}}
    for group, ep in (("zero-shot", zs), ("full", full)):
        if ep is not None:
            n, of = (zs_run, zs_of) if group == "zero-shot" else (1, 1)
            (root / group).mkdir(parents=True, exist_ok=True)
            (root / group / "endpoints.json").write_text(json.dumps(
                {"pretrain_seed": seed, "splits_run": [f"ext-{j}" for j in range(1, n + 1)],
                 "not_run": [f"ext-{j}" for j in range(n + 1, of + 1)], "endpoints": ep}))


def test_report_and_combined_table_record_the_seed_and_disagreement(tmp_path):
    full = _full(_ep(0.0, -0.01, 0.01, "inconclusive"), _ep(0.05, 0.01, 0.09, "reproduced"),
                 _ep(-0.05, -0.1, 0.0, "not reproduced"), _ep(0.0, -0.01, 0.01, "inconclusive"),
                 _ep(-0.05, -0.1, 0.02, "not reproduced"))
    _write_backbone(tmp_path / "p0", 0, (-0.01, 0.01), full)
    _write_backbone(tmp_path / "p1", 1, (-0.05, 0.01), None)
    for seed in (0, 1):
        doc = extension_report(tmp_path / f"p{seed}", ExtensionConfig(), "cmd")
        assert doc["pretrain_seed"] == seed
    assert (tmp_path / "p0" / "extension.md").read_text().startswith("# Extension of the evidence: pretraining seed 0")
    out = combine([tmp_path / "p0", tmp_path / "p1"], None, tmp_path / "all", "report-cmd")
    verdicts = {v["claim"]: v for v in out["verdicts"]}
    # equivalent on seed 0, inconclusive on seed 1; seed 1 has no full group, so it and the combined table are interim
    assert verdicts["C1"]["verdict"] == "interim backbone-dependent"
    assert verdicts["C1"]["by_pretrain_seed"] == {"0": "not reproduced", "1": "interim inconclusive"}
    assert verdicts["C2"]["verdict"] == "interim not reproduced" and verdicts["C2"]["by_pretrain_seed"] == {
        "0": "not reproduced"}  # seed 1 did not run C2: it does not count
    table = (tmp_path / "all" / "headline.md").read_text()
    assert "pretraining seed 0" in table and "pretraining seed 1" in table and "equivalent" in table
    # groups of one backbone run on different seeds are refused
    (tmp_path / "p0" / "full" / "endpoints.json").write_text(json.dumps(
        {"pretrain_seed": 5, "splits_run": [], "not_run": [], "endpoints": full}))
    with pytest.raises(ValueError, match="different pretraining seeds"):
        extension_report(tmp_path / "p0", ExtensionConfig(), "cmd")


def test_a_group_short_of_its_registered_splits_makes_its_claims_interim(tmp_path):
    """Protocol-extension §7: "interim: n of N splits", every verdict word prefixed "interim", never final."""
    _write_backbone(tmp_path / "p0", 0, (0.01, 0.02), None, zs_run=31, zs_of=40)
    doc = extension_report(tmp_path / "p0", ExtensionConfig(), "cmd")
    c1 = doc["verdicts"][0]
    assert c1["verdict"] == "interim reproduced" and c1["splits"] == "interim: 31 of 40 splits"
    assert c1["vs_energy"]["equivalence"] == "interim small gain" and c1["vs_mcm"]["rule_verdict"] == (
        "interim reproduced")
    assert doc["interim"] and doc["progress"]["zero-shot"]["prefix"]
    assert {v["verdict"] for v in doc["verdicts"][1:]} == {"not run"}  # no group ran: nothing to prefix
    md = (tmp_path / "p0" / "extension.md").read_text()
    assert "**Interim report**" in md and "zero-shot: interim: 31 of 40 splits" in md
    assert "| small gain" not in md and "| reproduced" not in md  # no word without its prefix
    out = combine([tmp_path / "p0", tmp_path / "p1"], None, tmp_path / "all", "report-cmd")
    assert out["verdicts"][0]["verdict"] == "interim reproduced" and out["missing"] == [str(tmp_path / "p1")]
    head = (tmp_path / "all" / "headline.md").read_text()
    assert "**Interim**" in head and "zero-shot interim: 31 of 40 splits" in head and "No results yet" in head
    # C1's group complete, the full group not yet run: the backbone's report (C1 included) is still interim
    _write_backbone(tmp_path / "p0", 0, (0.01, 0.02), None, zs_run=40, zs_of=40)
    part = extension_report(tmp_path / "p0", ExtensionConfig(), "cmd")
    assert part["verdicts"][0]["verdict"] == "interim reproduced" and part["verdicts"][0]["splits"] == "40 of 40 splits"
    assert part["progress"]["full"]["text"] == "interim: 0 of 20 splits"
    # every registered split of both groups finished: final words, no prefix
    full = _full(*[_ep(0.05, 0.02, 0.08, "reproduced")] * 5)
    _write_backbone(tmp_path / "p0", 0, (0.01, 0.02), full, zs_run=40, zs_of=40)
    final = extension_report(tmp_path / "p0", ExtensionConfig(), "cmd")
    assert final["verdicts"][0]["verdict"] == "reproduced" and not final["interim"]
    assert "Interim" not in (tmp_path / "p0" / "extension.md").read_text()
    # ... but the combined table stays interim while another backbone has no results
    assert combine([tmp_path / "p0", tmp_path / "p1"], None, tmp_path / "all", "c")["verdicts"][0]["verdict"] == (
        "interim reproduced")


def test_the_selection_table_hides_the_reset_logit_under_its_old_name_too():
    from proxy.evidence import _selection

    signal = {"above_chance": True}
    for key in ("reset_logit", "delta_energy_reset_logit"):  # records before and after i22's renaming
        doc = {"name": "ext-1", "selection": {"zero-shot": {"loss": None, "scores": {"delta_energy": {
            "temperature": 1.0, key: 0.0, "hocv_auroc": 0.9, "hocv_se": 0.01, "signal": signal}}}}}
        assert "reset_logit" not in _selection([doc]) and "temperature=1.0" in _selection([doc])


def test_backbone_differences_pair_the_splits_both_backbones_ran(tmp_path):
    key = "P1 zero-shot: ΔE − energy, near AUROC"
    for seed, values in ((0, {"ext-1": 0.01, "ext-2": -0.02, "ext-3": 0.0}), (1, {"ext-1": 0.03, "ext-2": 0.0})):
        (tmp_path / f"p{seed}" / "zero-shot").mkdir(parents=True)
        per = [{"split": k, "mean": v} for k, v in values.items()]
        (tmp_path / f"p{seed}" / "zero-shot" / "endpoints.json").write_text(json.dumps(
            {"endpoints": {"primary": {key: {"per_split": per}}}}))
    d = backbone_differences([tmp_path / "p0", tmp_path / "p1"])
    assert set(d) == {"C1"} and d["C1"]["splits"] == ["ext-1", "ext-2"]
    assert d["C1"]["mean"] == pytest.approx(0.02) and d["C1"]["n"] == 2
    assert backbone_differences([tmp_path / "p0"]) == {}

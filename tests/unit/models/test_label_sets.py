"""Label-set files and checks (models/label_sets.py): labels, names, the default rule's gate, atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from models.bundle import AdHocRule
from models.calibration import CalibrationRecord
from models.label_sets import (
    BundleRef,
    LabelLimits,
    LabelSetFile,
    check_labels,
    check_name,
    examples_needed,
    read_label_set,
    rule_calibration,
    write_label_set,
)
from models.text_runtime import LabelError

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("labels", "message"), [
    (["a"], "at least 2"),
    (["a", ""], "empty"),
    (["a", "   "], "empty or only whitespace"),
    (["a", " b"], "leading or trailing whitespace"),
    (["a", "b\n"], "leading or trailing whitespace"),
    (["a", "b\x00c"], "control character"),
    (["octagon", "Octagon"], "duplicates"),
    (["red circle", "red_circle"], "duplicates"),
    (["a", "x" * 101], "101 characters"),
    ([str(i) for i in range(257)], "257 labels; the limit is 256"),
])
def test_bad_labels_are_refused_with_a_message_naming_them(labels: list[str], message: str) -> None:
    with pytest.raises(LabelError, match=message):
        check_labels(labels, LabelLimits())


def test_good_labels_pass_unchanged() -> None:
    assert check_labels(["octagon", "pentagon", "six-pointed star", "café"], LabelLimits()) == [
        "octagon", "pentagon", "six-pointed star", "café"]


@pytest.mark.parametrize("name", ["", "-x", "a/b", "../x", "x" * 65, "ad-hoc", "bundle", "other", "a b"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(LabelError):
        check_name(name)


def _rule() -> AdHocRule:
    q2, q4 = np.linspace(0.0, 10.0, 101), np.linspace(0.0, 6.0, 101)
    return AdHocRule(ks=[2, 4], thresholds=[1.0, 0.5], quantiles=[q2.tolist(), q4.tolist()], subsets_per_k=5,
                     images=100, data="test", seed=0, measured={"examples_per_label": {"2": 40, "4": 20}})


def test_the_rule_interpolates_in_one_over_k_and_refuses_outside_its_range() -> None:
    rule = _rule()
    assert rule_calibration(rule, 2).threshold == pytest.approx(1.0)
    assert rule_calibration(rule, 4).threshold == pytest.approx(0.5)
    # K = 3: 1/3 lies 1/3 of the way from 1/4 to 1/2
    assert rule_calibration(rule, 3).threshold == pytest.approx(0.5 + (1 / 3 - 1 / 4) / (1 / 2 - 1 / 4) * 0.5)
    rec = rule_calibration(rule, 2)
    assert rec.p_value(np.array([5.0]))[0] == pytest.approx(0.5, abs=0.01)
    for k in (1, 5):
        with pytest.raises(LabelError, match="covers label sets of 2 to 4 labels"):
            rule_calibration(rule, k)


def test_examples_needed_reads_the_nearest_measured_k_at_or_below() -> None:
    rule = _rule()  # measured: K=2 needs 40 per label, K=4 needs 20
    assert [examples_needed(rule, k) for k in (2, 3, 4, 9)] == [40, 40, 20, 20]
    tried = {"per_k": {str(k): {str(n): {} for n in (5, 20, 64)} for k in (2, 5, 8)}}
    short = rule.model_copy(update={"measured": {"examples_per_label": {"8": 40}, "examples": tried}})
    assert [examples_needed(short, k) for k in (2, 5, 7, 8)] == [64, 64, 64, 40]  # below K=8 none was enough
    assert examples_needed(None, 3) is None


def _label_set(name: str = "shapes", k: int = 3, d: int = 4) -> LabelSetFile:
    emb = np.random.default_rng(0).standard_normal((k, d)).astype("<f4")
    import base64
    import hashlib

    ls = LabelSetFile(name=name, labels=[f"l{i}" for i in range(k)], prompts="learned", source="cli",
                      bundle=BundleRef(name="b", version="1", fingerprint="f" * 64), embedding_dim=d,
                      embeddings_b64=base64.b64encode(emb.tobytes()).decode(),
                      embeddings_sha256=hashlib.sha256(emb.tobytes()).hexdigest(), score_params={}, calibrated=True,
                      calibration=CalibrationRecord.from_scores(np.arange(20.0)))
    return ls.model_copy(update={"sha256": ls.content_hash()})


def test_a_written_set_reads_back_equal(tmp_path: Path) -> None:
    ls = _label_set()
    path = write_label_set(tmp_path, ls)
    assert path == tmp_path / "shapes.json" and read_label_set(path) == ls
    assert read_label_set(path).embeddings().shape == (3, 4)
    assert [p.name for p in tmp_path.iterdir()] == ["shapes.json"]  # no temporary file left


def test_a_crash_during_the_write_leaves_the_old_file_and_no_partial_one(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    old = _label_set(k=2)
    write_label_set(tmp_path, old)

    def crash(*args: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        write_label_set(tmp_path, _label_set(k=3))
    assert [p.name for p in tmp_path.iterdir()] == ["shapes.json"]
    assert read_label_set(tmp_path / "shapes.json") == old


@pytest.mark.parametrize("damage", ["truncate", "edit", "rename", "not-json"])
def test_a_damaged_file_is_refused_naming_it(tmp_path: Path, damage: str) -> None:
    path = write_label_set(tmp_path, _label_set())
    text = path.read_text(encoding="utf-8")
    if damage == "truncate":
        path.write_text(text[: len(text) // 2], encoding="utf-8")
    elif damage == "edit":
        path.write_text(text.replace('"l1"', '"lx"'), encoding="utf-8")
    elif damage == "rename":
        path = path.rename(tmp_path / "other.json")
    else:
        path.write_bytes(b"\xff\xfe")
    with pytest.raises(LabelError, match=path.name):
        read_label_set(path)

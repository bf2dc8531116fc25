"""``bench compare``'s verdict, medians and Markdown, on hand-made segments (no servers)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from deltagate.bench.compare import CompareConfig, judge, markdown_report, summarize, verdict
from deltagate.bench.http import MISMATCH, Payload, _outcome, response_label, summarize_load

pytestmark = pytest.mark.unit


def test_judge_says_inconclusive_when_rounds_fall_on_both_sides() -> None:
    def ok(v: float) -> bool:
        return v >= 1.0

    assert judge([1.1, 1.2, 1.0], ok) == "met"
    assert judge([0.9, 0.8, 0.99], ok) == "not met"
    assert judge([1.1, 0.9, 1.2], ok) == "inconclusive"  # the median (1.1) alone would say met
    assert judge([None, None], ok) == "not measured"


def _level(rate: float, p99: float, c1_p50: float, **failures: int) -> dict[str, Any]:
    sat = {"images_per_s": rate, "p50_ms": p99 / 2, "p99_ms": p99, "n": 100, "status_counts": {},
           "errors": 0, "lost": 0, "mismatched": 0}
    c1 = {**sat, "p50_ms": c1_p50, **failures}
    return {"c1": c1, "saturation": sat}


def _segment(r: int, dg_rate: float, dg_c1: float, condition: str = "quiet") -> dict[str, Any]:
    return {
        "round": r, "workload": "small", "condition": condition, "order": [],
        "load_average_before": [1.0, 1.0, 1.0], "load_average_after": [2.0, 1.0, 1.0],
        "systems": {
            "raw": {"batch1_p50_ms": 50.0, "images_per_s": 20.0, "int8_images_per_s": 40.0, "int8_speedup": 2.0},
            "deltagate": _level(dg_rate, 900.0, dg_c1),
            "auto": _level(2 * dg_rate, 500.0, dg_c1),  # auto serving a graph twice as fast
            "plain": _level(18.0, 1000.0, 51.0),
            "litserve": _level(19.0, 950.0, 60.0),
        },
        "overload": {"refused_p99_ms": 4.0, "errors": 0, "lost": 0, "mismatched": 0, "status_counts": {}},
    }


def _by_target(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["target"]: r for r in rows}


def test_verdict_per_round_against_the_best_peer_and_the_raw_engine() -> None:
    cfg = CompareConfig(bundle=".", workloads=("small",), conditions=("quiet",))  # type: ignore[arg-type]
    segs = [_segment(0, 19.8, 52.0), _segment(1, 19.0, 52.5), _segment(2, 19.9, 53.5)]
    got = _by_target(verdict(segs, cfg))
    peer = got["quiet: images/s / best peer (small)"]
    # independent arithmetic: 19.8/19, 19/19, 19.9/19 -> one round below 1.03
    assert peer["per_round"] == pytest.approx([19.8 / 19, 1.0, 19.9 / 19], abs=1e-3)
    assert peer["verdict"] == "inconclusive"
    raw = got["quiet: images/s / raw engine (small)"]
    assert raw["per_round"] == pytest.approx([0.99, 0.95, 0.995]) and raw["verdict"] == "inconclusive"
    overhead = got["quiet: c=1 p50 overhead - plain app's (small, ms)"]
    assert overhead["per_round"] == pytest.approx([1.0, 1.5, 2.5])  # (52-50)-(51-50), ...
    assert overhead["verdict"] == "inconclusive"
    assert got["quiet: int8 / float32 raw images/s"]["verdict"] == "met"
    assert got["quiet: 503 p99 with the queue full (ms)"]["verdict"] == "met"
    assert got["quiet: errors + lost + mismatched (every system)"]["verdict"] == "met"
    auto = got["quiet: auto images/s / best peer (small)"]
    assert auto["per_round"] == pytest.approx([39.6 / 19, 38 / 19, 39.8 / 19], abs=1e-3) and auto["verdict"] == "met"
    auto_raw = got["quiet: auto images/s / raw float32 engine (small)"]
    assert auto_raw["per_round"] == pytest.approx([1.98, 1.9, 1.99]) and auto_raw["verdict"] == "met"
    no_auto = CompareConfig(bundle=".", workloads=("small",), conditions=("quiet",), engines=("onnx",))  # type: ignore[arg-type]
    assert not [t for t in _by_target(verdict(segs, no_auto)) if "auto" in t]


def test_a_mismatch_anywhere_fails_the_errors_target() -> None:
    cfg = CompareConfig(bundle=".", workloads=("small",), conditions=("quiet",))  # type: ignore[arg-type]
    seg = _segment(0, 20.0, 52.0)
    seg["systems"]["litserve"]["c1"]["mismatched"] = 1
    got = _by_target(verdict([seg], cfg))
    assert got["quiet: errors + lost + mismatched (every system)"]["verdict"] == "not met"
    rows = {r["system"]: r for r in summarize([seg], cfg)}
    assert rows["litserve"]["failures"] == 1 and rows["deltagate"]["failures"] == 0
    assert rows["deltagate"]["c1_overhead_ms"] == pytest.approx(2.0)


def test_markdown_is_generated_from_the_report_alone() -> None:
    cfg = CompareConfig(bundle=".", workloads=("small",), conditions=("quiet",))  # type: ignore[arg-type]
    segs = [_segment(0, 20.0, 52.0)]
    report = {"command": "deltagate bench compare --bundle B", "started_at": "t", "wall_seconds": 1.0,
              "machine": {"usable_cpus": 2}, "segments": segs, "summary": summarize(segs, cfg),
              "verdict": verdict(segs, cfg), "served": {
                  "auto": {"engine": "onnx-int8", "precision": "int8", "reason": "int8_passed", "detail": "faster"}}}
    md = markdown_report(report)
    assert "`deltagate bench compare --bundle B`" in md and "| quiet: images/s / best peer (small)" in md
    assert "- `auto` serves `onnx-int8` (int8; int8_passed): faster" in md
    assert "load average during the segments 1.00–2.00" in md


def test_response_labels_of_deltagate_and_of_the_peers() -> None:
    assert response_label({"results": [{"label": "cat"}]}) == "cat"
    assert response_label({"label": "dog", "delta_energy": 1.0}) == "dog"
    assert response_label({"results": []}) is None and response_label([1]) is None
    payload = Payload(b"x", expected_label="cat")
    assert _outcome(httpx.Response(200, json={"label": "cat"}), payload) == "200"
    assert _outcome(httpx.Response(200, json={"label": "dog"}), payload) == MISMATCH
    assert _outcome(httpx.Response(200, content=b"not json"), payload) == MISMATCH
    assert _outcome(httpx.Response(503), payload) == "503"


def test_mismatches_are_errors_in_the_load_summary() -> None:
    log = [(0.0, 1.5, "200"), (1.0, 2.0, MISMATCH), (2.0, 3.0, "200")]
    result = summarize_load(log, begin=1.0, end=3.0, concurrency=1)
    assert result.errors == 1 and result.status_counts == {"200": 2, MISMATCH: 1}

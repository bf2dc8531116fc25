"""``deltagate bench compare`` end to end on the micro bundle: real servers (deltagate, the plain
FastAPI app, LitServe, the small-queue deltagate), one short round, every answer's label checked."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deltagate.cli import app

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Servers started by tests take ports from this range when set (shared machines give each user one).
PORTS = os.environ.get("DELTAGATE_TEST_PORTS", "")


def test_compare_runs_every_system_and_checks_every_answer(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "compare.json"
    args = ["bench", "compare", "--bundle", str(tiny_bundle), "--out", str(out), "--rounds", "1",
            "--workloads", "small", "--conditions", "quiet", "--seconds", "1", "--c1-seconds", "0.5",
            "--concurrency", "4", *(["--ports", PORTS] if PORTS else [])]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.output, repr(result.exception))
    report = json.loads(out.read_text())
    (segment,) = report["segments"]
    assert set(segment["systems"]) == {"raw", "deltagate", "auto", "plain", "litserve"}
    # The micro bundle has no int8 or float16 graph: engine=auto serves model.onnx, and says so.
    assert report["served"]["deltagate"]["engine"] == report["served"]["auto"]["engine"] == "onnx"
    assert report["served"]["auto"]["reason"] == "no_reduced_graph"
    for name in ("deltagate", "auto", "plain", "litserve"):
        for level in ("c1", "saturation"):
            got = segment["systems"][name][level]
            assert got["n"] > 0 and got["images_per_s"] > 0, (name, level, got)
            # every 200 carried the label the raw engine gives its image (a wrong one is a mismatch)
            assert got["errors"] == got["lost"] == got["mismatched"] == 0, (name, level, got)
    over = segment["overload"]
    # The micro model is too fast to keep 8 images waiting, so 503s may not come; nothing else may.
    assert set(over["status_counts"]) <= {"200", "503"} and over["errors"] == over["lost"] == over["mismatched"] == 0
    # the probe's own delay is reported beside its latencies, with the session weight it ran at
    assert 0 <= over["probe_loop_lag_p99_ms"] <= over["probe_loop_lag_max_ms"]
    assert over["probe_autogroup_nice"] in {-10, None}
    assert {row["verdict"] for row in report["verdict"]} <= {"met", "not met", "inconclusive", "not measured"}
    assert report["machine"]["load_average_1_5_15"] and segment["load_average_after"]
    md = out.with_suffix(".md").read_text()
    assert report["command"] in md and "| quiet: errors + lost + mismatched (every system)" in md


def test_overload_measures_every_variant_with_the_probes_own_lag(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "overload.json"
    args = ["bench", "overload", "--bundle", str(tiny_bundle), "--out", str(out), "--rounds", "1", "--nice", "0",
            "--conditions", "quiet", "--seconds", "1", "--gc-freeze-ablation", "--probe-autogroup-nice", "0",
            *(["--ports", PORTS] if PORTS else [])]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.output, repr(result.exception))
    report = json.loads(out.read_text())
    (measured,) = report["rounds"]
    assert set(measured["results"]) == {"nice0", "nice0-nofreeze"}
    for variant, res in measured["results"].items():
        assert res["images_per_s"] > 0 and set(res["probe_status_counts"]) <= {"200", "503"}, (variant, res)
        assert 0 <= res["probe_loop_lag_p99_ms"] <= res["probe_loop_lag_max_ms"], (variant, res)
        assert res["probe_autogroup_nice"] in {0, None}  # 0 where /proc/self/autogroup is writable
    summary = report["summary"]["quiet"]
    assert set(summary) == {"nice0", "nice0-nofreeze"} and len(summary["nice0"]["probe_loop_lag_max_ms_rounds"]) == 1

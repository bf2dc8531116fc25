"""``deltagate bench engine`` on the tiny bundle: runs for about a second, writes well-formed JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deltagate.cli import app

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("engine", ["onnx", "torch"])
def test_bench_engine_writes_a_report(tiny_bundle: Path, tmp_path: Path, engine: str) -> None:
    out = tmp_path / "bench" / f"{engine}.json"
    args = ["bench", "engine", "--bundle", str(tiny_bundle), "--engine", engine, "--batch-sizes", "1,4",
            "--seconds", "0.5", "--image-size", "64x48", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.output, repr(result.exception))
    report = json.loads(out.read_text())
    # The command as parsed, not pytest's sys.argv (under a bare `pytest` that was just "deltagate").
    assert report["benchmark"] == "engine" and report["command"] == (
        f"deltagate bench engine --bundle {tiny_bundle} --engine {engine} --batch-sizes 1,4 --seconds 0.5 "
        f"--image-size 64x48 --out {out}")
    assert report["machine"]["cpu_count"] >= 1 and report["machine"]["versions"]["onnxruntime"]
    assert report["parameters"]["engine"] == engine
    rows = report["results"]
    assert [r["batch_size"] for r in rows] == [1, 4]
    for row in rows:
        assert row["engine"] == engine and row["device"] == "cpu" and row["forwards"] >= 3
        assert row["images_per_s"] > 0 and math.isfinite(row["images_per_s"])
        assert 0 < row["batch_p50_ms"] <= row["batch_p95_ms"] <= row["batch_p99_ms"] <= row["batch_max_ms"]
        # images/s is images forwarded over the time spent forwarding (independent formula). Not checked
        # against batch_mean_ms: that is rounded to 0.01 ms, which is > 2% of a micro model's forward.
        assert row["images_per_s"] == pytest.approx(row["batch_size"] * row["forwards"] / row["seconds"], rel=0.01)
    assert report["decode_preprocess"]["n"] >= 10 and report["decode_preprocess"]["p50_ms"] > 0
    assert "images_per_s" in result.output  # the printed table


def test_bench_refuses_bad_batch_sizes(tiny_bundle: Path) -> None:
    result = CliRunner().invoke(app, ["bench", "engine", "--bundle", str(tiny_bundle), "--batch-sizes", "0,x"])
    assert result.exit_code != 0

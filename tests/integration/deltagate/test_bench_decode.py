"""`deltagate bench decode`: full vs fast decode on the same images through a real engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deltagate.cli import app

pytestmark = pytest.mark.integration


def test_bench_decode_writes_a_report(tiny_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "decode.json"
    args = ["bench", "decode", "--bundle", str(tiny_bundle), "--images", "3", "--megapixels", "0.5",
            "--repeats", "1", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    native, large = report["workloads"]["world_native"], report["workloads"]["world_0.5mp"]
    # At the model input size nothing is reduced, so both paths are the same computation.
    assert native["reduced_decodes"] == 0 and native["max_abs_delta_energy_diff"] == 0.0
    assert native["label_agreement"] == 1.0 and native["max_abs_pixel_diff"] == 0.0
    assert large["reduced_decodes"] == 3 and large["size"] == "816x612"
    assert 0.0 <= large["label_agreement"] <= 1.0 and large["max_abs_delta_energy_diff"] >= 0.0
    assert report["command"].startswith("deltagate ") and report["model_input"] == 32

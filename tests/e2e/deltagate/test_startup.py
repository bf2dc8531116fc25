"""``python -m deltagate.startup``: one cold start per engine on the default bundle."""

from __future__ import annotations

from pathlib import Path

import pytest

from deltagate.startup import Config, measure, table
from tests.server_process import REPO, free_test_port

pytestmark = pytest.mark.e2e


def test_cold_start_measures_readiness_memory_and_whether_torch_was_loaded() -> None:
    onnx = measure(Config("onnx", REPO, Path("bundles/default"), "onnx"), free_test_port(), timeout_s=120)
    torch = measure(Config("torch", REPO, Path("bundles/default"), "torch"), free_test_port(), timeout_s=120)
    assert not onnx.torch_loaded and torch.torch_loaded  # the ONNX engine serves without importing torch
    for sample in (onnx, torch):
        assert 0 < sample.ready_s < 120 and 0 < sample.rss_mib <= sample.peak_mib
    rows = [[cell.strip() for cell in line.strip("|").split("|")]
            for line in table({"onnx": [onnx], "torch": [torch]}).splitlines()]
    assert len(rows) == 4 and rows[2][:2] == ["onnx", "1"] and rows[2][-1] == "no" and rows[3][-1] == "yes"

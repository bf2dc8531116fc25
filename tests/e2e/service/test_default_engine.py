"""``make serve`` (``deltagate serve`` with every default) on the committed default bundle: engine=auto serves
its int8 graph, because the bundle's recorded parity and speed pass (docs/bundle.md), and says so in /model,
the start-up log and deltagate_model_info."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from models.bundle import load_bundle
from models.graph_choice import CPU_PROVIDER, check_graph
from tests.server_process import DEFAULT_BUNDLE, serving

pytestmark = pytest.mark.e2e


def test_make_serve_serves_the_default_bundles_int8_graph_and_says_so(tmp_path: Path) -> None:
    check = check_graph(load_bundle(DEFAULT_BUNDLE), "int8", CPU_PROVIDER)
    assert check.passed, check.detail  # the committed record passes; the service must then serve int8
    with serving(tmp_path / "server.log", {"DELTAGATE_DEVICE": "cpu"}) as server:  # cpu: as on a machine without CUDA
        model = httpx.get(f"{server.url}/model", timeout=10).json()
        metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert model["name"] == "deltagate-default" and model["engine"] == "onnx-int8" and model["precision"] == "int8"
    assert model["engine_choice"]["reason"] == "int8_passed" and model["engine_choice"]["detail"] == check.detail
    info = next(line for line in metrics.splitlines() if line.startswith("deltagate_model_info{"))
    assert 'engine="onnx-int8"' in info and 'engine_reason="int8_passed"' in info
    logged = [json.loads(line) for line in (tmp_path / "server.log").read_text().splitlines() if line.startswith("{")]
    chosen = [r for r in logged if r.get("msg", "").startswith("engine onnx-int8 (int8_passed)")]
    assert chosen and chosen[0]["detail"] == check.detail, logged[:5]

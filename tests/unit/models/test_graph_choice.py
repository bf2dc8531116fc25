"""The rule engine=auto applies to a bundle's reduced-precision graphs (models.graph_choice), on manifests
whose records are written here: every threshold, on each side of it, and every reason a graph is refused."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from models.bundle import FP16_ONNX_FILE, INT8_ONNX_FILE, ONNX_FILE, Bundle, FileEntry, Fp16Info, Int8Info
from models.calibration import CalibrationRecord
from models.graph_choice import CPU_PROVIDER, CUDA_PROVIDER, FIDELITY, check_graph, check_graphs
from service.engines.dummy import dummy_bundle

pytestmark = pytest.mark.unit

_FILE = FileEntry(sha256="0" * 64, size=1)


def parity(**changes: Any) -> dict[str, Any]:
    """A record of 1000 images that meets every threshold with room to spare."""
    return {"data": "id/test + ood/* of W", "images": 1000, "bundle_data": True, "provider": CPU_PROVIDER,
            "label_agreement": 0.98, "max_abs_delta_energy_diff": 0.2, "mean_abs_delta_energy_diff": 0.01,
            "id_delta_energy_std": 0.5, "gate_flips": 3, "thresholds": {"fp32": 1.0, "int8": 1.0},
            "accepted_images": 800, "accepted_label_agreement": 0.999, **changes}


def speed(b1: float = 1.5, b8: float = 2.0, provider: str = CPU_PROVIDER) -> dict[str, Any]:
    return {"provider": provider, "cpu": "test cpu", "rounds": 5,
            "images_per_cpu_s": {"fp32": {"1": 10.0, "8": 10.0}, "int8": {"1": 10 * b1, "8": 10 * b8}},
            "speedup": {"1": b1, "8": b8}}


def with_int8(record: dict[str, Any] | None = None, speed_record: dict[str, Any] | None = None,
              threshold: bool = True, **parity_changes: Any) -> Bundle:
    bundle = dummy_bundle(4)
    cal = CalibrationRecord.from_scores(np.linspace(0.0, 2.0, 101)) if threshold else None
    info = Int8Info.model_validate({"method": "dynamic", "per_channel": False, "calibration": cal,
                                    "parity": record or parity(**parity_changes),
                                    "speed": speed() if speed_record is None else speed_record})
    files = {ONNX_FILE: _FILE, INT8_ONNX_FILE: _FILE}
    bundle.manifest = bundle.manifest.model_copy(update={"int8": info, "files": files})
    return bundle


def with_fp16(provider: str, b1: float = 3.0, b8: float = 3.0) -> Bundle:
    bundle = dummy_bundle(4)
    info = Fp16Info.model_validate({"features": ["matmul"], "float32_nodes": 20,
                                    "parity": parity(provider=provider, thresholds={"fp32": 1.0, "fp16": 1.0}),
                                    "speed": speed(b1, b8, provider)})
    bundle.manifest = bundle.manifest.model_copy(update={"fp16": info,
                                                          "files": {ONNX_FILE: _FILE, FP16_ONNX_FILE: _FILE}})
    return bundle


def test_a_faithful_faster_int8_graph_passes_and_says_why() -> None:
    check = check_graph(with_int8(), "int8", CPU_PROVIDER)
    assert check.passed and check.code == "passed" and check.speedup == 1.5
    assert "accepted labels agree 0.9990, 3 of 1000 gate decisions flip, mean |ΔEnergy diff| 0.020 std" in check.detail
    assert "1.50x at batch 1, 2.00x at batch 8 on test cpu" in check.detail


@pytest.mark.parametrize(("changes", "phrase"), [
    ({"accepted_label_agreement": 0.9899}, "labels of accepted images agree on 0.9899 < 0.99"),
    ({"gate_flips": 11}, "11 of 1000 gate decisions flip (0.0110 > 0.01)"),
    ({"mean_abs_delta_energy_diff": 0.051}, "mean |ΔEnergy diff| is 0.102 std of ID ΔEnergy (> 0.1)"),
])
def test_each_parity_threshold_refuses_the_graph_just_past_it(changes: dict[str, Any], phrase: str) -> None:
    check = check_graph(with_int8(**changes), "int8", CPU_PROVIDER)
    assert not check.passed and check.code == "parity_failed" and phrase in check.detail


def test_a_record_exactly_at_every_threshold_passes() -> None:
    at = {"accepted_label_agreement": FIDELITY.min_accepted_label_agreement, "images": 1000,
          "gate_flips": int(1000 * FIDELITY.max_gate_flip_rate), "id_delta_energy_std": 0.5,
          "mean_abs_delta_energy_diff": 0.5 * FIDELITY.max_delta_energy_error}
    bundle = with_int8(speed_record=speed(FIDELITY.min_speedup, FIDELITY.min_speedup), **at)
    assert check_graph(bundle, "int8", CPU_PROVIDER).passed


def test_a_graph_slower_at_one_batch_size_is_not_served() -> None:
    check = check_graph(with_int8(speed_record=speed(b1=1.05, b8=2.5)), "int8", CPU_PROVIDER)
    assert not check.passed and check.code == "not_faster" and "1.05x at batch 1" in check.detail


def test_without_a_speed_record_the_graph_is_not_served() -> None:
    bundle = with_int8()
    info = bundle.manifest.int8
    assert info is not None
    bundle.manifest = bundle.manifest.model_copy(update={"int8": info.model_copy(update={"speed": None})})
    check = check_graph(bundle, "int8", CPU_PROVIDER)
    assert not check.passed and check.code == "no_speed_record"


@pytest.mark.parametrize("changes", [
    {"gate_flips": None, "accepted_images": None, "accepted_label_agreement": None},  # no thresholds: drawings
    {"bundle_data": False},  # drawings standing in for the bundle's data
    {"bundle_data": None},  # written before the field
])
def test_without_a_parity_record_on_the_bundles_data_the_graph_is_not_served(changes: dict[str, Any]) -> None:
    check = check_graph(with_int8(**changes), "int8", CPU_PROVIDER)
    assert not check.passed and check.code == "no_parity_record" and "deltagate quantize" in check.detail


def test_a_legacy_int8_record_is_no_parity_record() -> None:
    legacy = {"data": "id/test of W", "images": 100, "label_agreement": 1.0, "max_abs_delta_energy_diff": 0.1,
              "mean_abs_delta_energy_diff": 0.01, "id_accuracy_fp32": 0.9, "id_accuracy_int8": 0.9}
    check = check_graph(with_int8(record=legacy, speed_record=speed()), "int8", CPU_PROVIDER)
    assert not check.passed and check.code == "no_parity_record"


def test_an_int8_graph_without_its_own_threshold_is_not_served() -> None:
    check = check_graph(with_int8(threshold=False), "int8", CPU_PROVIDER)
    assert not check.passed and check.code == "no_threshold"


def test_int8_is_cpu_only_and_fp16_cuda_only() -> None:
    assert check_graph(with_int8(), "int8", CUDA_PROVIDER).code == "cpu_only"
    assert check_graph(with_fp16(CUDA_PROVIDER), "fp16", CPU_PROVIDER).code == "cuda_only"
    assert check_graph(with_int8(), "fp16", CPU_PROVIDER).code == "no_graph"


def test_fp16_is_served_on_cuda_only_with_records_measured_there() -> None:
    cpu_record = check_graph(with_fp16(CPU_PROVIDER), "fp16", CUDA_PROVIDER)
    assert not cpu_record.passed and cpu_record.code == "other_provider" and CPU_PROVIDER in cpu_record.detail
    assert check_graph(with_fp16(CUDA_PROVIDER), "fp16", CUDA_PROVIDER).passed


def test_check_graphs_puts_the_fastest_passing_graph_first() -> None:
    bundle = with_int8(speed_record=speed(1.2, 1.3))
    fp16 = with_fp16(CUDA_PROVIDER, 2.0, 2.5).manifest
    bundle.manifest = bundle.manifest.model_copy(update={"fp16": fp16.fp16, "files": {**bundle.manifest.files,
                                                                                         FP16_ONNX_FILE: _FILE}})
    assert [c.tag for c in check_graphs(bundle, CUDA_PROVIDER)] == ["fp16", "int8"]  # int8: cpu_only
    cpu = check_graphs(bundle, CPU_PROVIDER)
    assert [(c.tag, c.passed) for c in cpu] == [("int8", True), ("fp16", False)]


def test_auto_serves_the_passing_graph_and_says_why() -> None:
    from service.engines import choose_engine

    choice = choose_engine("auto", with_int8(), "cpu")
    assert (choice.engine, choice.reason) == ("onnx-int8", "int8_passed") and "faithful" in choice.detail
    assert choice.facts() == {"engine_requested": "auto", "engine_reason": "int8_passed"}
    assert [c["graph"] for c in choice.to_dict()["checks"]] == ["int8", "fp16"]


def test_auto_falls_back_to_float32_and_names_the_failed_check() -> None:
    from service.engines import choose_engine

    failed = choose_engine("auto", with_int8(gate_flips=50), "cpu")
    assert (failed.engine, failed.reason) == ("onnx", "int8_parity_failed")
    assert failed.detail.startswith("model.onnx (float32) serves: the int8 graph is not faithful: 50 of 1000")
    assert choose_engine("auto", with_int8(), "cuda").reason == "int8_cpu_only"
    plain = dummy_bundle(4)
    plain.manifest = plain.manifest.model_copy(update={"files": {ONNX_FILE: _FILE}})
    assert (choose_engine("auto", plain, "cpu").engine, choose_engine("auto", plain, "cpu").reason) == (
        "onnx", "no_reduced_graph")
    assert choose_engine("auto", dummy_bundle(4), "cpu").reason == "no_onnx"
    asked = choose_engine("onnx", with_int8(), "cpu")
    assert (asked.engine, asked.reason, asked.checks) == ("onnx", "requested", ())

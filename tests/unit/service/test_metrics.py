"""The Prometheus metrics: the gate score histogram's bounds and what it observes, multiprocess mode."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from models.bundle import load_bundle
from models.calibration import CalibrationRecord
from service.engines.dummy import dummy_bundle
from service.metrics import DELTA_ENERGY_GRID, ServiceMetrics, gate_score_buckets
from tests.server_process import DEFAULT_BUNDLE

pytestmark = pytest.mark.unit


def test_gate_score_buckets_hold_the_threshold_and_calibration_quantiles() -> None:
    manifest = dummy_bundle(4).manifest
    calib = manifest.calibration
    assert calib is not None
    buckets = gate_score_buckets(manifest)
    assert buckets == sorted(set(buckets))
    assert round(calib.threshold, 6) in buckets
    median = float(np.interp(0.5, calib.quantile_levels, calib.quantile_values))
    assert round(median, 6) in buckets


def test_the_bounds_are_every_graphs_whichever_graph_serves() -> None:
    """The default bundle's int8 graph has its own threshold: an int8 server's histogram holds it and the float32
    graph's bounds (the shipped alert rules select those), the same bounds as a float32 server's."""
    bundle = load_bundle(DEFAULT_BUNDLE, verify=False)
    int8 = bundle.int8_variant()
    fp32_calib, int8_calib = bundle.manifest.calibration, int8.manifest.calibration
    assert fp32_calib is not None and int8_calib is not None and fp32_calib.threshold != int8_calib.threshold
    assert int8.stored_manifest is bundle.manifest  # the view keeps the manifest as stored
    buckets = gate_score_buckets(int8.stored_manifest)
    assert buckets == gate_score_buckets(bundle.stored_manifest)
    for calib in (fp32_calib, int8_calib):
        median = float(np.interp(0.5, calib.quantile_levels, calib.quantile_values))
        assert {round(calib.threshold, 6), round(median, 6)} <= set(buckets)


def test_multiprocess_metrics_refuse_a_process_without_the_env_variable(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RuntimeError, match="PROMETHEUS_MULTIPROC_DIR"):
        ServiceMetrics(8, multiprocess_dir=tmp_path)  # this test process imported prometheus_client without it


def histogram_buckets(metrics: ServiceMetrics) -> dict[str, dict[float, float]]:
    """Every histogram's cumulative bucket counts by ``le``, from the scrape body."""
    buckets: dict[str, dict[float, float]] = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for s in family.samples:
            if s.name.endswith("_bucket"):
                buckets.setdefault(s.name.removesuffix("_bucket"), {})[float(s.labels["le"])] = s.value
    return buckets


def test_the_gate_histogram_observes_the_bundles_gate_score_not_always_delta_energy() -> None:
    manifest = dummy_bundle(2).manifest.model_copy(update={
        "calibration": CalibrationRecord.from_scores(np.linspace(10.0, 20.0, 101), score="max_logit")})
    metrics = ServiceMetrics(8)
    metrics.bind_model(manifest, {"engine": "dummy"})
    metrics.observe_images("bundle", ["class_0", "class_1"], gate_scores=[15.0, 30.0], delta_energies=[0.2, 3.0],
                           is_ood=[False, False])
    buckets = histogram_buckets(metrics)
    gate, de = buckets["deltagate_gate_score"], buckets["deltagate_delta_energy"]
    assert manifest.calibration is not None and round(manifest.calibration.threshold, 6) in gate
    assert gate[20.0] == 1.0 and gate[float("inf")] == 2.0  # 15 and 30: the gate scores, not ΔEnergy
    assert sorted(de) == [*DELTA_ENERGY_GRID, float("inf")]  # no max_logit calibration bounds on ΔEnergy
    assert de[0.5] == 1.0 and de[5.0] == 2.0


def test_with_the_default_gate_delta_energy_is_recorded_once_as_the_gate_score() -> None:
    manifest = dummy_bundle(2).manifest
    assert manifest.calibration is not None and manifest.calibration.score == "delta_energy"
    metrics = ServiceMetrics(8)
    metrics.bind_model(manifest, {"engine": "dummy"})
    metrics.observe_images("bundle", ["class_0", "class_1"], gate_scores=[0.2, 3.0], delta_energies=[0.2, 3.0],
                           is_ood=[False, False])
    buckets = histogram_buckets(metrics)
    assert "deltagate_delta_energy" not in buckets  # not exported: it would repeat deltagate_gate_score
    assert b"deltagate_delta_energy" not in metrics.exposition()
    gate = buckets["deltagate_gate_score"]
    assert gate[0.5] == 1.0 and gate[5.0] == 2.0 and gate[float("inf")] == 2.0

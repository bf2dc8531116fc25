"""JSON log lines and the ΔEnergy histogram bounds."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from service.engines.dummy import dummy_bundle
from service.telemetry import JsonFormatter, delta_energy_buckets

pytestmark = pytest.mark.unit


def test_json_formatter_writes_one_object_with_fields() -> None:
    record = logging.LogRecord("deltagate.access", logging.INFO, __file__, 1, "request", None, None)
    record.fields = {"request_id": "abc", "latency_ms": 1.5, "is_ood": [True]}
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["msg"] == "request" and entry["level"] == "info" and entry["request_id"] == "abc"
    assert entry["is_ood"] == [True]


def test_delta_energy_buckets_hold_the_threshold_and_calibration_quantiles() -> None:
    manifest = dummy_bundle(4).manifest
    calib = manifest.calibration
    assert calib is not None
    buckets = delta_energy_buckets(manifest)
    assert buckets == sorted(set(buckets))
    assert round(calib.threshold, 6) in buckets
    median = float(np.interp(0.5, calib.quantile_levels, calib.quantile_values))
    assert round(median, 6) in buckets

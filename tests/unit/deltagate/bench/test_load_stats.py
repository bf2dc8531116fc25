"""The bench's throughput window and statistics, on synthetic request logs."""

from __future__ import annotations

import numpy as np
import pytest

from deltagate.bench.http import summarize_load
from deltagate.bench.report import format_table, latency_stats

pytestmark = pytest.mark.unit


def bursts(batch: int, cycle: float, n: int, latency: float) -> list[tuple[float, float, str]]:
    """A closed loop answering ``batch`` requests together every ``cycle`` seconds."""
    return [(k * cycle - latency, k * cycle + 1e-4 * i, "200") for k in range(1, n + 1) for i in range(batch)]


@pytest.mark.parametrize("phase", [0.0, 0.3, 0.75, 1.49])
def test_throughput_spans_whole_batch_cycles_whatever_the_window_phase(phase: float) -> None:
    log = bursts(batch=8, cycle=1.5, n=20, latency=3.0)
    result = summarize_load(log, begin=2.0 + phase, end=12.0 + phase, concurrency=16)
    assert result.requests_per_s == pytest.approx(8 / 1.5, rel=1e-3)  # independent: batch / cycle
    assert result.errors == 0 and result.latency.p50_ms == pytest.approx(3000, abs=1)


def test_errors_and_status_counts_after_the_warmup() -> None:
    log = [(0.0, 0.5, "200"), (0.5, 1.5, "503"), (1.0, 2.0, "200"), (2.0, 3.0, "ReadTimeout"), (3.0, 4.0, "200")]
    result = summarize_load(log, begin=1.0, end=4.0, concurrency=1)
    assert result.status_counts == {"200": 2, "503": 1, "ReadTimeout": 1}
    assert result.requests == 4 and result.errors == 2
    assert result.requests_per_s == pytest.approx(2 / 3.5, abs=0.005)  # 200s at 2.0 and 4.0 after the one at 0.5


def test_latency_stats_match_numpy_percentiles() -> None:
    seconds = list(np.random.default_rng(0).exponential(0.05, 500))
    stats = latency_stats(seconds)
    assert stats.n == 500
    assert stats.p95_ms == pytest.approx(1000 * np.percentile(seconds, 95), abs=0.01)
    assert latency_stats([]).n == 0


def test_format_table_aligns_columns() -> None:
    text = format_table([{"a": 1, "b": 2.5}, {"a": 100, "b": None}], ["a", "b"])
    lines = text.splitlines()
    assert len({len(line) for line in lines}) == 1 and lines[3].split() == ["100", "-"]


def test_a_fast_model_at_concurrency_1_is_not_one_burst() -> None:
    # One client, an answer every 3 ms (closer than the burst gap): each answer is its own batch.
    log = [(k * 0.003 - 0.002, k * 0.003, "200") for k in range(1, 1001)]
    result = summarize_load(log, begin=0.5, end=2.5, concurrency=1)
    assert result.requests_per_s == pytest.approx(1 / 0.003, rel=0.01)  # independent: one per interval

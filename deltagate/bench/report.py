"""Benchmark bookkeeping: latency statistics, machine facts and a plain-text table."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.version import package_version

__all__ = ["LatencyStats", "latency_stats", "machine_info", "format_table"]

_PACKAGES = ("deltagate", "torch", "onnxruntime", "numpy", "pillow", "fastapi", "uvicorn", "httpx")


@dataclass(frozen=True)
class LatencyStats:
    """Latency percentiles in milliseconds."""

    n: int
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


def latency_stats(seconds: Sequence[float]) -> LatencyStats:
    """Percentiles of a list of durations (linear interpolation, NumPy's default).

    Args:
        seconds: durations in seconds; may be empty (then every field is NaN and n is 0).

    Returns:
        The statistics in milliseconds, rounded to 0.01 ms.
    """
    if not seconds:
        nan = float("nan")
        return LatencyStats(0, nan, nan, nan, nan, nan)
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0  # (N,)
    p50, p95, p99 = np.percentile(ms, [50, 95, 99]).tolist()
    return LatencyStats(len(ms), round(float(ms.mean()), 2), round(p50, 2), round(p95, 2), round(p99, 2),
                        round(float(ms.max()), 2))


def machine_info() -> dict[str, Any]:
    """Facts that make a benchmark number comparable: CPUs, load, platform, package versions."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
        "versions": {p: package_version(p) for p in _PACKAGES},
    }
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
    except ImportError:  # pragma: no cover - torch is a core dependency
        pass
    return info


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A fixed-width text table (pastes into Markdown code blocks as printed).

    Hand-written (a dozen lines) because the output must be copyable verbatim into docs; rich's
    tables use box-drawing characters and wrap to the terminal width.
    """

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "nan" if value != value else f"{value:.2f}"
        return "-" if value is None else str(value)

    table = [list(columns)] + [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    lines = ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)

"""The two benchmarks behind ``deltagate bench``: raw engine, and service against engine.

``bench service`` measures the raw engine in this process right before and right after driving
the real server, so the ratio is taken on the same machine under the same background load.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.bench.engine import EngineResult, load_engine, measure_engine
from service.bench.http import LoadResult, ServerProcess, batch_counters, run_load
from service.bench.report import machine_info
from service.settings import DeviceName, Settings

__all__ = ["TARGETS", "engine_report", "service_report", "write_report"]

logger = logging.getLogger(__name__)

# The targets (a 2-core CPU, ONNX Runtime, a ViT-B-32-sized model).
TARGETS = {
    "min_throughput_ratio": 0.9,  # service images/s at saturation >= 0.9 x raw engine at max_batch_size
    "max_p50_overhead_ms": 10.0,  # concurrency 1: service p50 <= raw batch-1 forward p50 + 10 ms
    "max_errors": 0,
}


def _header(command: str, kind: str) -> dict[str, Any]:
    return {"benchmark": kind, "command": command, "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine_info()}


def engine_report(
    command: str, bundle: Path, engine: str, batch_sizes: Sequence[int], seconds: float, png: bytes,
    device: DeviceName = "cpu",
) -> dict[str, Any]:
    """``bench engine``: throughput and per-forward latency at each batch size.

    Returns:
        The JSON-ready report (command, machine, parameters, one row per batch size).
    """
    report = _header(command, "engine")
    report["parameters"] = {"bundle": str(bundle), "engine": engine, "device": device,
                            "batch_sizes": list(batch_sizes), "seconds": seconds, "image_bytes": len(png)}
    model = load_engine(bundle, engine, device)
    try:
        report["results"] = [measure_engine(model, png, b, seconds).as_row() for b in batch_sizes]
    finally:
        model.engine.close()
    report["machine"]["load_average_after"] = machine_info()["load_average_1_5_15"]
    return report


def _engine_pass(settings: Settings, png: bytes, seconds: float) -> dict[int, EngineResult]:
    """Raw engine at batch 1 and at ``max_batch_size``, loaded fresh and closed after."""
    model = load_engine(settings.bundle_path, settings.engine, settings.device)
    try:
        sizes = sorted({1, settings.max_batch_size})
        return {b: measure_engine(model, png, b, seconds) for b in sizes}
    finally:
        model.engine.close()


def _service_levels(
    settings: Settings, png: bytes, concurrency: Sequence[int], seconds: float, warmup_s: float
) -> tuple[list[dict[str, Any]], float | None]:
    """Drive the real server at each concurrency; add the server's mean batch size per level."""
    rows: list[dict[str, Any]] = []
    with ServerProcess(settings) as server:
        for c in concurrency:
            before = batch_counters(server.url)
            load: LoadResult = run_load(server.url, png, c, seconds, warmup_s, settings.request_timeout_s)
            after = batch_counters(server.url)
            forwards = after["forwards"] - before["forwards"]
            row = load.as_row()
            row["status_counts"] = load.status_counts
            row["mean_batch_size"] = round((after["images"] - before["images"]) / forwards, 2) if forwards else None
            row["mean_forward_ms"] = (
                round(1000 * (after["forward_seconds"] - before["forward_seconds"]) / forwards, 2) if forwards else None
            )
            rows.append(row)
            logger.info("service concurrency %d: %.2f images/s", c, load.requests_per_s)
        return rows, server.startup_seconds


def _mean(a: float, b: float) -> float:
    return round((a + b) / 2.0, 2)


def _verdict(rows: list[dict[str, Any]], engine: dict[str, dict[int, EngineResult]], max_batch: int) -> dict[str, Any]:
    """Ratios against the raw engine (mean of the before and after passes) and the targets."""
    raw_max = _mean(engine["before"][max_batch].images_per_s, engine["after"][max_batch].images_per_s)
    raw_b1_p50 = _mean(engine["before"][1].latency.p50_ms, engine["after"][1].latency.p50_ms)
    saturated = max(rows, key=lambda r: r["concurrency"])
    single = min(rows, key=lambda r: r["concurrency"])
    ratio = round(saturated["requests_per_s"] / raw_max, 3)
    overhead = round(single["p50_ms"] - raw_b1_p50, 2) if single["concurrency"] == 1 else None
    errors = sum(r["errors"] for r in rows)
    return {
        "raw_engine_images_per_s_at_max_batch": raw_max,
        "raw_engine_batch1_p50_ms": raw_b1_p50,
        "saturation_concurrency": saturated["concurrency"],
        "throughput_ratio": ratio,
        "concurrency1_p50_overhead_ms": overhead,
        "errors": errors,
        "targets": TARGETS,
        "met": {
            "throughput_ratio": ratio >= TARGETS["min_throughput_ratio"],
            "concurrency1_p50_overhead": None if overhead is None else overhead <= TARGETS["max_p50_overhead_ms"],
            "errors": errors <= TARGETS["max_errors"],
        },
    }


def service_report(
    command: str, settings: Settings, png: bytes, concurrency: Sequence[int], seconds: float,
    engine_seconds: float, warmup_s: float = 2.0,
) -> dict[str, Any]:
    """``bench service``: engine pass, server under load at each concurrency, engine pass again.

    Args:
        command: the command line, stored in the report.
        settings: the service's settings (bundle, engine, batching).
        png: encoded image every request sends.
        concurrency: client counts; the largest is taken as saturation, 1 (if given) for latency.
        seconds: measured window per concurrency level.
        engine_seconds: time per batch size in each raw engine pass.
        warmup_s: unmeasured lead-in per concurrency level.

    Returns:
        The JSON-ready report with the raw engine, the service rows and the verdict on the targets.
    """
    report = _header(command, "service")
    report["settings"] = settings.model_dump(mode="json", exclude={"api_key"})
    report["parameters"] = {"concurrency": list(concurrency), "seconds": seconds, "engine_seconds": engine_seconds,
                            "warmup_s": warmup_s, "image_bytes": len(png), "request": "multipart, 1 image"}
    t0 = time.perf_counter()
    engine = {"before": _engine_pass(settings, png, engine_seconds)}
    rows, startup = _service_levels(settings, png, concurrency, seconds, warmup_s)
    engine["after"] = _engine_pass(settings, png, engine_seconds)
    report["engine"] = {when: [r.as_row() for r in by_size.values()] for when, by_size in engine.items()}
    report["service"] = rows
    report["server_startup_s"] = startup
    report["verdict"] = _verdict(rows, engine, settings.max_batch_size)
    report["wall_seconds"] = round(time.perf_counter() - t0, 1)
    report["machine"]["load_average_after"] = machine_info()["load_average_1_5_15"]
    return report


def write_report(report: dict[str, Any], path: Path) -> None:
    """Write a report as indented JSON (creating the folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

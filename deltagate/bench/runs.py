"""The two benchmarks behind ``deltagate bench``: raw engine, and service against engine.

``bench service`` alternates raw engine passes (in this process) with load on the real server
(a subprocess), so every ratio is taken on the same machine under the same background load.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deltagate.bench.engine import EngineResult, load_engine, measure_engine, measure_preprocess
from deltagate.bench.http import LoadResult, batch_counters, run_load
from deltagate.bench.report import machine_info
from deltagate.server_process import ServerProcess, deltagate_server
from service.runtime import LoadedModel
from service.settings import DeviceName, Settings

__all__ = ["TARGETS", "engine_report", "service_report", "write_report"]

logger = logging.getLogger(__name__)

# Service-vs-engine targets of `bench service`, stated here in full (docs/benchmarks.md repeats them):
# on a 2-core CPU with ONNX Runtime and a ViT-B-32-sized model, batching and HTTP may cost at most
# 10% of the raw engine's throughput and 10 ms of median latency at concurrency 1, with no errors.
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
        report["decode_preprocess"] = asdict(measure_preprocess(model, png, min(seconds, 2.0)))
    finally:
        model.engine.close()
    report["machine"]["load_average_after"] = machine_info()["load_average_1_5_15"]
    return report


def _engine_pass(model: LoadedModel, png: bytes, sizes: Sequence[int], seconds: float) -> dict[int, EngineResult]:
    """Raw engine at each batch size (the model stays loaded between passes)."""
    return {b: measure_engine(model, png, b, seconds) for b in sizes}


def _service_level(server: ServerProcess, png: bytes, concurrency: int, seconds: float, warmup_s: float,
                   timeout_s: float) -> dict[str, Any]:
    """Drive the server at one concurrency; add the server's own batch and forward numbers.

    Two of the added fields pair server-side with client-side numbers of the same period, so they
    hold even when the machine's background load drifts, because both sides count the same
    requests (every request of the level falls between the two /metrics scrapes):
    ``forward_busy_share``, the share of wall time the inference thread spent in forwards, and
    ``mean_outside_forward_ms``, the clients' mean latency minus the server's mean forward time.
    At concurrency 1 every request is one forward of batch 1, so the latter is exactly the mean
    time a request spends outside its forward: HTTP, decode, batching wait, postprocessing.
    """
    before, t0 = batch_counters(server.url), time.perf_counter()
    load: LoadResult = run_load(server.url, png, concurrency, seconds, warmup_s, timeout_s)
    after, wall = batch_counters(server.url), time.perf_counter() - t0
    forwards = after["forwards"] - before["forwards"]
    forward_s = after["forward_seconds"] - before["forward_seconds"]
    row = load.as_row()
    row["status_counts"] = load.status_counts
    row["mean_batch_size"] = round((after["images"] - before["images"]) / forwards, 2) if forwards else None
    row["mean_forward_ms"] = round(1000 * forward_s / forwards, 2) if forwards else None
    row["forward_busy_share"] = round(forward_s / wall, 3)
    row["mean_outside_forward_ms"] = round(load.mean_all_ms - row["mean_forward_ms"], 2) if forwards else None
    logger.info("service concurrency %d: %.2f images/s", concurrency, load.requests_per_s)
    return row


def _compare(row: dict[str, Any], around: list[dict[int, EngineResult]], max_batch: int) -> None:
    """Ratio and latency overhead of one service row against the engine passes just before and after it."""
    raw_max = statistics.fmean(p[max_batch].images_per_s for p in around)
    raw_b1_p50 = statistics.fmean(p[1].latency.p50_ms for p in around)
    row["raw_images_per_s_at_max_batch"] = round(raw_max, 2)
    row["throughput_ratio"] = round(row["requests_per_s"] / raw_max, 3)
    row["raw_batch1_p50_ms"] = round(raw_b1_p50, 2)
    row["p50_overhead_ms"] = round(row["p50_ms"] - raw_b1_p50, 2)


def _verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds at saturation (largest concurrency) and at concurrency 1, against the targets."""
    top = max(r["concurrency"] for r in rows)
    ratios = [r["throughput_ratio"] for r in rows if r["concurrency"] == top]
    overheads = [r["p50_overhead_ms"] for r in rows if r["concurrency"] == 1]
    outside = [r["mean_outside_forward_ms"] for r in rows if r["concurrency"] == 1]
    ratio = round(statistics.median(ratios), 3)
    overhead = round(statistics.median(overheads), 2) if overheads else None
    errors = sum(r["errors"] for r in rows)
    return {
        "saturation_concurrency": top,
        "throughput_ratio_median": ratio,
        "throughput_ratio_per_round": ratios,
        "concurrency1_p50_overhead_ms_median": overhead,
        "concurrency1_p50_overhead_ms_per_round": overheads,
        "concurrency1_mean_outside_forward_ms_median": round(statistics.median(outside), 2) if outside else None,
        "concurrency1_mean_outside_forward_ms_per_round": outside,
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
    engine_seconds: float, rounds: int = 3, warmup_s: float = 2.0,
) -> dict[str, Any]:
    """``bench service``: engine pass, then per round each concurrency level and another engine pass.

    The raw engine runs in this process while the server idles, and the server is loaded while
    this process's engine idles; both stay loaded for the whole run. Interleaving short rounds
    keeps each service measurement next to an engine measurement, so a change in the machine's
    background load moves both: every service row is compared with the engine passes just before
    and just after it, and the verdict takes the median over rounds.

    Args:
        command: the command line, stored in the report.
        settings: the service's settings (bundle, engine, batching).
        png: encoded image every request sends.
        concurrency: client counts; the largest is taken as saturation, 1 (if given) for latency.
        seconds: measured window per concurrency level and round.
        engine_seconds: time per batch size (1 and ``max_batch_size``) of each engine pass.
        rounds: rounds of (service levels, engine pass).
        warmup_s: unmeasured lead-in per concurrency level.

    Returns:
        The JSON-ready report: engine passes, service rows with their ratios, verdict on the targets.
    """
    report = _header(command, "service")
    report["settings"] = settings.model_dump(mode="json", exclude={"api_key"})
    report["parameters"] = {"concurrency": list(concurrency), "seconds": seconds, "engine_seconds": engine_seconds,
                            "rounds": rounds, "warmup_s": warmup_s, "image_bytes": len(png),
                            "request": "multipart, 1 image"}
    t0 = time.perf_counter()
    sizes = sorted({1, settings.max_batch_size})
    model = load_engine(settings.bundle_path, settings.engine, settings.device)
    passes: list[dict[int, EngineResult]] = []
    rows: list[dict[str, Any]] = []
    try:
        with deltagate_server(settings) as server:
            report["server_startup_s"] = server.startup_seconds
            passes.append(_engine_pass(model, png, sizes, engine_seconds))
            for r in range(rounds):
                round_rows = [{"round": r, **_service_level(server, png, c, seconds, warmup_s,
                                                           settings.request_timeout_s)} for c in concurrency]
                passes.append(_engine_pass(model, png, sizes, engine_seconds))
                for row in round_rows:
                    _compare(row, passes[-2:], settings.max_batch_size)
                rows += round_rows
    finally:
        model.engine.close()
    report["engine"] = [{"pass": i, **res.as_row()} for i, by_size in enumerate(passes) for res in by_size.values()]
    report["service"] = rows
    report["verdict"] = _verdict(rows)
    report["wall_seconds"] = round(time.perf_counter() - t0, 1)
    report["machine"]["load_average_after"] = machine_info()["load_average_1_5_15"]
    return report


def write_report(report: dict[str, Any], path: Path) -> None:
    """Write a report as indented JSON (creating the folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

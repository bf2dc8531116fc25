"""``deltagate bench overload``: how fast a full service says "busy", per ``compute_nice``, and what it costs.

For each ``compute_nice`` value (default: 0, the compute threads at the event loop's priority, and
the service's default) two servers of the same bundle run side by side for the whole run:

* an *overload* server (``max_queue_size`` 8): 48 closed-loop fillers keep its admission budget
  full, waiting 2 ms after each 503, while a probe in its own process (:mod:`deltagate.bench.probe`)
  sends one request every 20 ms; the probe's 503 latency (client side) is the number (issue 16:
  p99 ≤ 10 ms) — the same measurement as ``bench compare``'s "503 with the queue full";
* a *saturation* server (``max_queue_size`` 256): images/s with 16 closed-loop clients, so that
  the price of a lower priority, if any, shows as lost throughput.

Rounds interleave the values in a rotated order, in each condition (``quiet``; ``neighbour``: a
one-core busy loop), and record the load average before and after every measurement: the machine
is shared, and a number means little without it. Medians over rounds; ratios within a round.
"""

from __future__ import annotations

import logging
import os
import statistics
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deltagate.bench.compare import make_workload, neighbour
from deltagate.bench.engine import load_engine
from deltagate.bench.http import probe_while_full, run_load
from deltagate.bench.report import latency_stats, machine_info
from deltagate.server_process import ServerProcess, deltagate_server
from service.settings import Settings

__all__ = ["OverloadConfig", "overload_report", "MAX_503_P99_MS"]

logger = logging.getLogger(__name__)

MAX_503_P99_MS = 10.0  # issue 16's target for the probe's 503s with the budget full


@dataclass(frozen=True)
class OverloadConfig:
    """What one ``bench overload`` run measures."""

    bundle: Path
    nice_values: tuple[int, ...] = (0, 10)
    rounds: int = 3
    conditions: tuple[str, ...] = ("quiet", "neighbour")
    clients: int = 48  # fillers of the overload server
    queue: int = 8  # its max_queue_size
    probe_seconds: float = 4.0
    concurrency: int = 16  # saturation clients
    seconds: float = 5.0  # measured window at saturation
    warmup_s: float = 1.0
    max_batch_size: int = 8
    images: int = 8
    port_range: tuple[int, int] | None = None


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _servers(cfg: OverloadConfig, stack: ExitStack) -> dict[tuple[int, str], ServerProcess]:
    base = Settings(bundle_path=cfg.bundle, engine="onnx", device="cpu", max_batch_size=cfg.max_batch_size,
                    max_queue_size=256, log_level="warning")
    servers = {}
    for nice in cfg.nice_values:
        full = base.model_copy(update={"compute_nice": nice, "max_queue_size": cfg.queue, "max_images_per_request": 1})
        servers[(nice, "overload")] = deltagate_server(full, port_range=cfg.port_range, name=f"overload-nice{nice}")
        servers[(nice, "saturation")] = deltagate_server(base.model_copy(update={"compute_nice": nice}),
                                                         port_range=cfg.port_range, name=f"saturation-nice{nice}")
    for server in servers.values():
        stack.callback(server.__exit__, None, None, None)
        server.start()
    for server in servers.values():
        server.wait_ready()
    return servers


def _measure(servers: dict[tuple[int, str], ServerProcess], nice: int, workload: Any,
             cfg: OverloadConfig) -> dict[str, Any]:
    before = _loadavg()
    fill, probe = probe_while_full(servers[(nice, "overload")].url, workload.payloads, cfg.clients, cfg.probe_seconds,
                                   cfg.warmup_s)
    refused = latency_stats([t1 - t0 for t0, t1, o in probe if o == "503"])
    probe_counts = {o: sum(1 for *_, x in probe if x == o) for o in sorted({o for *_, o in probe})}
    fill_counts = {o: sum(1 for *_, x in fill if x == o) for o in sorted({o for *_, o in fill})}
    between = _loadavg()
    load = run_load(servers[(nice, "saturation")].url, workload.payloads, cfg.concurrency, cfg.seconds, cfg.warmup_s)
    return {"compute_nice": nice, "refused_p50_ms": refused.p50_ms, "refused_p99_ms": refused.p99_ms,
            "refused_max_ms": refused.max_ms, "refused_n": refused.n, "probe_status_counts": probe_counts,
            "filler_status_counts": fill_counts, "images_per_s": load.requests_per_s,
            "saturation_status_counts": load.status_counts, "saturation_p99_ms": load.latency.p99_ms,
            "load_average_before": before, "load_average_between": between, "load_average_after": _loadavg()}


def _summary(rounds: list[dict[str, Any]], cfg: OverloadConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    low = min(cfg.nice_values)
    for condition in cfg.conditions:
        rows = [r for r in rounds if r["condition"] == condition]
        per_nice: dict[str, Any] = {}
        for nice in cfg.nice_values:
            p99 = [r["results"][str(nice)]["refused_p99_ms"] for r in rows]
            ratio = [r["results"][str(nice)]["images_per_s"] / r["results"][str(low)]["images_per_s"] for r in rows]
            per_nice[str(nice)] = {
                "refused_p99_ms_median": statistics.median(p99), "refused_p99_ms_rounds": p99,
                "refused_p50_ms_median": statistics.median(r["results"][str(nice)]["refused_p50_ms"] for r in rows),
                "images_per_s_median": statistics.median(r["results"][str(nice)]["images_per_s"] for r in rows),
                f"images_per_s_ratio_to_nice{low}_median": round(statistics.median(ratio), 3),
                f"images_per_s_ratio_to_nice{low}_rounds": [round(x, 3) for x in ratio],
                "rounds_meeting_503_p99_target": sum(1 for v in p99 if v <= MAX_503_P99_MS),
                "load_average_1min_median": statistics.median(r["results"][str(nice)]["load_average_before"][0]
                                                              for r in rows),
            }
        out[condition] = per_nice
    return out


def overload_report(command: str, cfg: OverloadConfig) -> dict[str, Any]:
    """Run the rounds and return the JSON-ready report (every measurement, medians per condition)."""
    model = load_engine(cfg.bundle, "onnx")
    workload = make_workload("small", model, cfg.images)
    model.engine.close()
    rounds: list[dict[str, Any]] = []
    with ExitStack() as stack:
        servers = _servers(cfg, stack)
        for r in range(cfg.rounds):
            for condition in cfg.conditions:
                k = r % len(cfg.nice_values)
                order = [*cfg.nice_values[k:], *cfg.nice_values[:k]]  # rotated: no value always goes first
                with neighbour(condition == "neighbour"):
                    results = {str(nice): _measure(servers, nice, workload, cfg) for nice in order}
                for nice, res in results.items():
                    logger.info("round %d %s nice %s: 503 p99 %.1f ms, %.2f images/s, load %s", r, condition, nice,
                                res["refused_p99_ms"], res["images_per_s"], res["load_average_before"])
                rounds.append({"round": r, "condition": condition, "order": order, "results": results})
    return {"command": command, "machine": machine_info(), "config": {k: str(v) if isinstance(v, Path) else v
                                                                      for k, v in cfg.__dict__.items()},
            "target_503_p99_ms": MAX_503_P99_MS, "rounds": rounds, "summary": _summary(rounds, cfg)}

"""``deltagate bench overload``: how fast a full service says "busy", per ``compute_nice``, and what it costs.

For each variant — each ``compute_nice`` value of this checkout (default: 0, the compute threads at
the event loop's priority, and the service's default) and, with ``--baseline DIR``, the service of
another checkout (e.g. a worktree of the commit before) — two servers of the same bundle run side
by side for the whole run:

* an *overload* server (``max_queue_size`` 8): 48 closed-loop fillers keep its admission budget
  full, waiting 2 ms after each 503, while a probe in its own process (:mod:`deltagate.bench.probe`)
  sends one request every 20 ms; the probe's 503 latency (client side) is the number (issue 16:
  p99 ≤ 10 ms) — the same measurement as ``bench compare``'s "503 with the queue full";
* a *saturation* server (``max_queue_size`` 256): images/s with 16 closed-loop clients, so that
  the price of a lower priority, if any, shows as lost throughput.

With ``gc_freeze_ablation``, the last ``compute_nice`` value is also measured with the heap left
unfrozen (variant ``nice<N>-nofreeze``, ``gc_freeze`` off), so a report shows what the freeze
buys. The probe (:mod:`deltagate.bench.probe`) runs at ``probe_autogroup_nice`` where allowed and
reports its own loop lag per measurement (``probe_loop_lag_*``), the part of its latency that
was the probe's own.

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
from deltagate.bench.http import PROBE_AUTOGROUP_NICE, probe_while_full, run_load
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
    baseline: Path | None = None  # another checkout's service, measured as the variant "baseline"
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
    gc_freeze_ablation: bool = False  # also the last nice value with gc_freeze off ("nice<N>-nofreeze")
    probe_autogroup_nice: int = PROBE_AUTOGROUP_NICE  # the probe session's weight where allowed (0: as others)

NOFREEZE = "-nofreeze"


def _loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _variants(cfg: OverloadConfig) -> list[str]:
    return [*(["baseline"] if cfg.baseline is not None else []), *(f"nice{n}" for n in cfg.nice_values),
            *([f"nice{cfg.nice_values[-1]}{NOFREEZE}"] if cfg.gc_freeze_ablation else [])]


def _overrides(variant: str) -> dict[str, Any]:
    """The settings a variant changes: compute_nice (and gc_freeze off for a "-nofreeze" one)."""
    if variant == "baseline":
        # the baseline's settings may predate compute_nice: settings_to_env passes it on, and an
        # older checkout ignores unknown DELTAGATE_* variables (extra="ignore")
        return {}
    nice = variant.removeprefix("nice").removesuffix(NOFREEZE)
    return {"compute_nice": int(nice), **({"gc_freeze": False} if variant.endswith(NOFREEZE) else {})}


def _servers(cfg: OverloadConfig, stack: ExitStack) -> dict[tuple[str, str], ServerProcess]:
    base = Settings(bundle_path=cfg.bundle, engine="onnx", device="cpu", max_batch_size=cfg.max_batch_size,
                    max_queue_size=256, log_level="warning")
    servers = {}
    for variant in _variants(cfg):
        pythonpath = str(cfg.baseline) if variant == "baseline" else None
        nice = _overrides(variant)
        full = base.model_copy(update={**nice, "max_queue_size": cfg.queue, "max_images_per_request": 1})
        servers[(variant, "overload")] = deltagate_server(full, pythonpath=pythonpath, port_range=cfg.port_range,
                                                          name=f"overload-{variant}")
        servers[(variant, "saturation")] = deltagate_server(base.model_copy(update=nice), pythonpath=pythonpath,
                                                            port_range=cfg.port_range, name=f"saturation-{variant}")
    for server in servers.values():
        stack.callback(server.__exit__, None, None, None)
        server.start()
    for server in servers.values():
        server.wait_ready()
    return servers


def _measure(servers: dict[tuple[str, str], ServerProcess], variant: str, workload: Any,
             cfg: OverloadConfig) -> dict[str, Any]:
    before = _loadavg()
    run = probe_while_full(servers[(variant, "overload")].url, workload.payloads, cfg.clients, cfg.probe_seconds,
                           cfg.warmup_s, probe_autogroup_nice=cfg.probe_autogroup_nice)
    fill, probe = run.fill, run.probe
    refused = latency_stats([t1 - t0 for t0, t1, o in probe if o == "503"])
    probe_counts = {o: sum(1 for *_, x in probe if x == o) for o in sorted({o for *_, o in probe})}
    fill_counts = {o: sum(1 for *_, x in fill if x == o) for o in sorted({o for *_, o in fill})}
    between = _loadavg()
    load = run_load(servers[(variant, "saturation")].url, workload.payloads, cfg.concurrency, cfg.seconds, cfg.warmup_s)
    return {"variant": variant, "refused_p50_ms": refused.p50_ms, "refused_p99_ms": refused.p99_ms,
            "refused_max_ms": refused.max_ms, "refused_n": refused.n, "probe_status_counts": probe_counts,
            "filler_status_counts": fill_counts, **run.facts(), "images_per_s": load.requests_per_s,
            "saturation_status_counts": load.status_counts, "saturation_p99_ms": load.latency.p99_ms,
            "load_average_before": before, "load_average_between": between, "load_average_after": _loadavg()}


def _summary(rounds: list[dict[str, Any]], cfg: OverloadConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    variants = _variants(cfg)
    ref = variants[0]  # throughput ratios against the first variant (the baseline, or the lowest nice)
    for condition in cfg.conditions:
        rows = [r["results"] for r in rounds if r["condition"] == condition]
        per: dict[str, Any] = {}
        for v in variants:
            p99 = [r[v]["refused_p99_ms"] for r in rows]
            ratio = [r[v]["images_per_s"] / r[ref]["images_per_s"] for r in rows]
            per[v] = {
                "refused_p99_ms_median": statistics.median(p99), "refused_p99_ms_rounds": p99,
                "refused_p50_ms_median": statistics.median(r[v]["refused_p50_ms"] for r in rows),
                "images_per_s_median": statistics.median(r[v]["images_per_s"] for r in rows),
                f"images_per_s_ratio_to_{ref}_median": round(statistics.median(ratio), 3),
                f"images_per_s_ratio_to_{ref}_rounds": [round(x, 3) for x in ratio],
                "rounds_meeting_503_p99_target": f"{sum(1 for x in p99 if x <= MAX_503_P99_MS)}/{len(p99)}",
                "probe_loop_lag_p99_ms_rounds": [r[v]["probe_loop_lag_p99_ms"] for r in rows],
                "probe_loop_lag_max_ms_rounds": [r[v]["probe_loop_lag_max_ms"] for r in rows],
                "load_average_1min_rounds": [r[v]["load_average_before"][0] for r in rows],
            }
        out[condition] = per
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
                variants = _variants(cfg)
                k = r % len(variants)
                order = [*variants[k:], *variants[:k]]  # rotated: no variant always goes first
                with neighbour(condition == "neighbour"):
                    results = {v: _measure(servers, v, workload, cfg) for v in order}
                for v, res in results.items():
                    logger.info("round %d %s %s: 503 p99 %.1f ms, %.2f images/s, load %s", r, condition, v,
                                res["refused_p99_ms"], res["images_per_s"], res["load_average_before"])
                rounds.append({"round": r, "condition": condition, "order": order, "results": results})
    return {"command": command, "machine": machine_info(), "config": {k: str(v) if isinstance(v, Path) else v
                                                                      for k, v in cfg.__dict__.items()},
            "target_503_p99_ms": MAX_503_P99_MS, "rounds": rounds, "summary": _summary(rounds, cfg)}

"""``deltagate bench compare``: deltagate against its peers and the raw engine, in interleaved rounds.

Every system serves the same bundle's ``model.onnx`` with the same preprocessing, and gets the same
closed-loop load of single-image multipart requests (:func:`deltagate.bench.http.run_load`):

- ``deltagate``: this checkout's service (``service.server.run`` in a subprocess) on ``model.onnx``
  (``engine=onnx``, float32); ``auto``: the same service with ``engine=auto``, which serves the bundle's
  fastest graph whose recorded parity passes (its ``/model`` says which, and the report keeps it).
- ``baseline``: the service of another checkout (``--baseline DIR``, e.g. a worktree of an older
  commit), for "x times today's" targets.
- ``litserve`` and ``plain``: the peers of :mod:`deltagate.bench.peers`.
- ``raw``: the service's ONNX engine in this process, forwards back to back (no HTTP, no decode):
  batch 1 (latency reference) and ``max_batch_size`` (throughput reference) of the float32 graph;
  ``raw-int8`` the bundle's int8 graph at both when it has one.

A run is rounds x workloads x conditions of *segments*. In a segment each system is measured at
concurrency 1 and at saturation, in an order rotated every round, while the other servers idle;
then a deltagate server with a small queue is overloaded to time its 503s. Conditions: ``quiet``
and ``neighbour`` (a one-core busy loop this process starts for the segment). Every 200 is checked
against the label the raw engine of the graph that system serves gives the same image. The verdict
per target is ``met`` when every round meets it, ``not met`` when none does, else ``inconclusive``
(with the median).
"""

from __future__ import annotations

import io
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deltagate.bench.engine import load_engine, measure_engine
from deltagate.bench.http import (
    MISMATCH,
    LoadResult,
    Payload,
    probe_while_full,
    run_load,
    synthetic_image,
)
from deltagate.bench.peers import PEERS
from deltagate.bench.report import latency_stats, machine_info
from deltagate.server_process import ServerProcess, deltagate_server
from models.markdown import markdown_table
from models.preprocess import decode_and_preprocess
from service.engines import VARIANT_ENGINES
from service.runtime import LoadedModel
from service.settings import Settings

__all__ = [
    "COMPARE_TARGETS",
    "CompareConfig",
    "Workload",
    "make_workload",
    "judge",
    "compare_report",
]

logger = logging.getLogger(__name__)

# Targets of the comparison, stated in full (docs/benchmarks.md shows them with measured values):
COMPARE_TARGETS: dict[str, float] = {
    "min_ratio_to_best_peer": 1.03,  # deltagate (and auto) images/s at saturation >= 1.03 x max(litserve, plain)
    "min_ratio_to_raw_quiet": 0.97,  # ... >= 0.97 x raw engine at max_batch_size, quiet machine
    "min_ratio_to_raw_neighbour": 0.90,  # ... >= 0.90 x raw engine beside the one-core neighbour
    "max_c1_overhead_over_plain_ms": 2.0,  # c=1 p50 - raw batch-1 p50 <= the plain app's overhead + 2 ms
    "max_c1_overhead_neighbour_ms": 10.0,  # ... and <= 10 ms beside the neighbour
    "min_ratio_to_baseline_photo": 3.0,  # real-photo workload: >= 3 x the baseline checkout's images/s
    "min_int8_speedup": 1.5,  # raw int8 graph images/s >= 1.5 x raw float32 at max_batch_size
    "max_503_p99_ms": 10.0,  # with the queue full, 503 answered within 10 ms at p99
    "max_failures": 0,  # errors + lost + mismatched responses, every system, every run
}

PHOTO_SIZES = ((1152, 864), (2048, 1536), (3000, 2000), (4000, 3000))  # 1, 3, 6 and 12 MP
SMALL_SIZE = (256, 256)
JPEG_QUALITY = 90


@dataclass(frozen=True)
class CompareConfig:
    """What one ``bench compare`` run measures."""

    bundle: Path
    rounds: int = 3
    workloads: tuple[str, ...] = ("small", "photo")
    conditions: tuple[str, ...] = ("quiet", "neighbour")
    peers: tuple[str, ...] = PEERS
    engines: tuple[str, ...] = ("onnx", "auto")  # deltagate servers, one per engine setting (ENGINE_SYSTEMS)
    baseline: Path | None = None  # checkout whose service is the "today" reference
    baseline_workloads: tuple[str, ...] = ("photo",)  # where the baseline is measured (it costs time)
    concurrency: int = 16  # saturation level
    seconds: float = 6.0  # measured window at saturation
    c1_seconds: float = 3.0  # measured window at concurrency 1
    warmup_s: float = 1.0  # unmeasured lead-in of every level
    engine_seconds: float = 2.0  # per raw-engine batch size
    max_batch_size: int = 8  # deltagate's and the raw engine's batch (LitServe's is the same)
    images: int = 8  # distinct images per workload
    overload_clients: int = 48  # closed-loop clients against the small-queue server
    overload_queue: int = 8  # that server's max_queue_size
    overload_seconds: float = 3.0
    request_timeout_s: float = 60.0  # client timeout; a request past it counts as lost
    port_range: tuple[int, int] | None = None


ENGINE_SYSTEMS = {"onnx": "deltagate", "auto": "auto", "onnx-int8": "int8"}  # engine setting -> system name
_GRAPH_OF_ENGINE = {"onnx": "fp32", **{e: g for g, e in VARIANT_ENGINES.items()}}  # served engine -> its graph


@dataclass(frozen=True)
class Workload:
    """The images of a workload, each with the label the raw engine of each graph gives it."""

    name: str
    payloads: list[Payload]  # expected labels of the float32 graph
    sizes: list[tuple[int, int]]
    margins: list[float]  # top-1 minus top-2 logit (float32): how robust each expected label is
    by_graph: dict[str, list[Payload]] = field(default_factory=dict)  # "int8" -> the same images, its labels

    def for_graph(self, graph: str) -> list[Payload]:
        """The payloads whose expected labels are ``graph``'s (``fp32``, ``int8``)."""
        return self.payloads if graph == "fp32" else self.by_graph[graph]


def _jpeg(width: int, height: int, seed: int) -> bytes:
    buf = io.BytesIO()
    synthetic_image(width, height, seed).save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def make_workload(name: str, model: LoadedModel, n: int, others: dict[str, LoadedModel] | None = None) -> Workload:
    """``small``: n 256x256 JPEGs; ``photo``: n JPEGs cycling through 1, 3, 6 and 12 MP.

    The expected label of each image is the raw engine's argmax after the bundle's own decode and
    preprocessing (what every server must answer); ``others`` (graph -> raw engine, e.g. ``int8``) give
    the labels a server of that graph must answer.
    """
    if name == "small":
        sizes = [SMALL_SIZE] * n
    elif name == "photo":
        sizes = [PHOTO_SIZES[i % len(PHOTO_SIZES)] for i in range(n)]
    else:
        raise ValueError(f"unknown workload {name!r}; valid: small, photo")
    others = others or {}
    payloads, margins = [], []
    by_graph: dict[str, list[Payload]] = {g: [] for g in others}
    for i, (w, h) in enumerate(sizes):
        data = _jpeg(w, h, seed=100 + i)
        x = decode_and_preprocess(data, model.manifest.preprocess)[None]  # (1, 3, H, W)
        logits = model.infer(x)["logits"][0]  # (K,)
        top2 = np.sort(logits)[-2:]
        label = model.manifest.classes[int(np.argmax(logits))]
        payloads.append(Payload(data, f"{name}-{i}.jpg", "image/jpeg", label))
        margins.append(round(float(top2[1] - top2[0]), 4))
        for graph, other in others.items():
            other_label = model.manifest.classes[int(np.argmax(other.infer(x)["logits"][0]))]
            by_graph[graph].append(Payload(data, f"{name}-{i}.jpg", "image/jpeg", other_label))
    logger.info("workload %s: %d images, labels %s", name, n, [p.expected_label for p in payloads])
    return Workload(name, payloads, list(sizes), margins, by_graph)


@contextmanager
def neighbour(active: bool) -> Iterator[None]:
    """A one-core busy loop in a child process for the duration (a noisy neighbour), if ``active``."""
    if not active:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # let the scheduler see it before the clock starts
        yield
    finally:
        proc.kill()
        proc.wait()


def judge(values: Sequence[float | None], ok: Callable[[float], bool]) -> str:
    """``met`` when every round meets the target, ``not met`` when none does, else ``inconclusive``."""
    checked = [ok(v) for v in values if v is not None]
    if not checked:
        return "not measured"
    if all(checked):
        return "met"
    return "not met" if not any(checked) else "inconclusive"


def _failures(load: LoadResult, refused_ok: bool = False) -> dict[str, int]:
    """Errors, lost (timed-out) and mismatched responses of one level."""
    counts = load.status_counts
    lost = sum(v for k, v in counts.items() if "Timeout" in k)
    mismatched = counts.get(MISMATCH, 0)
    ok = {"200", MISMATCH} | ({"503"} if refused_ok else set())
    errors = sum(v for k, v in counts.items() if k not in ok and "Timeout" not in k)
    return {"errors": errors, "lost": lost, "mismatched": mismatched}


def _level(url: str, payloads: list[Payload], concurrency: int, seconds: float, cfg: CompareConfig) -> dict[str, Any]:
    load = run_load(url, payloads, concurrency, seconds, cfg.warmup_s, cfg.request_timeout_s)
    return {"images_per_s": load.requests_per_s, "p50_ms": load.latency.p50_ms, "p99_ms": load.latency.p99_ms,
            "n": load.latency.n, "status_counts": load.status_counts, **_failures(load)}


def _raw_pass(models: dict[str, LoadedModel], workload: Workload, cfg: CompareConfig) -> dict[str, Any]:
    data = workload.payloads[0].data
    fp32 = models["raw"]
    b1 = measure_engine(fp32, data, 1, cfg.engine_seconds, warmup=1)
    bmax = measure_engine(fp32, data, cfg.max_batch_size, cfg.engine_seconds, warmup=1)
    out: dict[str, Any] = {"batch1_p50_ms": b1.latency.p50_ms, "images_per_s": bmax.images_per_s}
    if "raw-int8" in models:
        q1 = measure_engine(models["raw-int8"], data, 1, cfg.engine_seconds, warmup=1)
        q = measure_engine(models["raw-int8"], data, cfg.max_batch_size, cfg.engine_seconds, warmup=1)
        out.update({"int8_images_per_s": q.images_per_s, "int8_batch1_p50_ms": q1.latency.p50_ms,
                    "int8_speedup": round(q.images_per_s / bmax.images_per_s, 3)})
    return out


def _segment(r: int, workload: Workload, condition: str, servers: dict[str, ServerProcess],
             models: dict[str, LoadedModel], cfg: CompareConfig, graphs: dict[str, str]) -> dict[str, Any]:
    """One workload in one condition: every system at c=1 and at saturation, then the overload probe."""
    systems = ["raw", *[s for s in servers if s != "overload" and _measured(s, workload.name, cfg)]]
    k = r % len(systems)
    order = systems[k:] + systems[:k]  # rotated every round, so no system always goes first
    seg: dict[str, Any] = {"round": r, "workload": workload.name, "condition": condition, "order": order,
                           "load_average_before": _loadavg(), "systems": {}}
    with neighbour(condition == "neighbour"):
        for name in order:
            if name == "raw":
                seg["systems"]["raw"] = _raw_pass(models, workload, cfg)
                continue
            url, payloads = servers[name].url, workload.for_graph(graphs.get(name, "fp32"))
            seg["systems"][name] = {"c1": _level(url, payloads, 1, cfg.c1_seconds, cfg),
                                    "saturation": _level(url, payloads, cfg.concurrency, cfg.seconds, cfg)}
            logger.info("round %d %s %s %s: %.2f images/s", r, workload.name, condition, name,
                        seg["systems"][name]["saturation"]["images_per_s"])
        if "overload" in servers:
            seg["overload"] = _overload(servers["overload"], workload, cfg)
    seg["load_average_after"] = _loadavg()
    return seg


def _outcomes(log: Sequence[tuple[float, float, str]]) -> dict[str, int]:
    return {o: sum(1 for *_, x in log if x == o) for o in sorted({o for *_, o in log})}


def _bad(counts: dict[str, int]) -> dict[str, int]:
    lost = sum(v for k, v in counts.items() if "Timeout" in k)
    errors = sum(v for k, v in counts.items() if k not in {"200", "503", MISMATCH} and "Timeout" not in k)
    return {"errors": errors, "lost": lost, "mismatched": counts.get(MISMATCH, 0)}


def _overload(server: ServerProcess, workload: Workload, cfg: CompareConfig) -> dict[str, Any]:
    """A full queue: how fast a request is refused, and that every answer is right.

    ``overload_clients`` fillers keep the small queue full (waiting 2 ms after each 503); a probe in
    its own process sends one request every 20 ms; its 503s' latency (client side) is the target's number.
    """
    run = probe_while_full(server.url, workload.payloads, cfg.overload_clients, cfg.overload_seconds,
                           cfg.warmup_s, timeout_s=cfg.request_timeout_s)
    fill, probe = run.fill, run.probe
    refused = latency_stats([t1 - t0 for t0, t1, o in probe if o == "503"])
    fill_refused = latency_stats([t1 - t0 for t0, t1, o in fill if o == "503"])
    counts, fill_counts = _outcomes(probe), _outcomes(fill)
    bad = {k: _bad(counts)[k] + _bad(fill_counts)[k] for k in ("errors", "lost", "mismatched")}
    return {"clients": cfg.overload_clients, "queue": cfg.overload_queue, "status_counts": counts,
            "refused_p50_ms": refused.p50_ms, "refused_p99_ms": refused.p99_ms, "refused_n": refused.n,
            "filler_status_counts": fill_counts, "filler_refused_p99_ms": fill_refused.p99_ms, **run.facts(), **bad}


def _measured(system: str, workload: str, cfg: CompareConfig) -> bool:
    return system != "baseline" or workload in cfg.baseline_workloads


def _loadavg() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _servers(cfg: CompareConfig, stack: ExitStack) -> dict[str, ServerProcess]:
    """Start every server once for the whole run (they idle while another system is measured)."""
    base = Settings(bundle_path=cfg.bundle, engine="onnx", device="cpu", max_batch_size=cfg.max_batch_size,
                    max_queue_size=max(256, cfg.concurrency), log_level="warning",
                    request_timeout_s=cfg.request_timeout_s)
    specs: dict[str, ServerProcess] = {
        ENGINE_SYSTEMS[e]: deltagate_server(base.model_copy(update={"engine": e}), port_range=cfg.port_range,
                                            name=ENGINE_SYSTEMS[e]) for e in cfg.engines}
    if cfg.baseline is not None:
        specs["baseline"] = deltagate_server(base, pythonpath=str(cfg.baseline), port_range=cfg.port_range,
                                             name="baseline")
    for peer in cfg.peers:
        argv = [sys.executable, "-m", "deltagate.bench.peers", peer, "--bundle", str(cfg.bundle), "--port", "{port}"]
        specs[peer] = ServerProcess(
            peer, argv,
            ready_path="/healthz" if peer == "plain" else "/health", port_range=cfg.port_range, graceful_s=10.0,
        )
    # A full request must fit the queue (the service refuses settings where it cannot).
    small = base.model_copy(update={"max_queue_size": cfg.overload_queue, "max_images_per_request": 1})
    specs["overload"] = deltagate_server(small, port_range=cfg.port_range, name="overload")
    for server in specs.values():  # all load at once; each is stopped when the run ends, whatever happens
        stack.callback(server.__exit__, None, None, None)
        server.start()
    for server in specs.values():
        server.wait_ready()
    return specs


def compare_report(command: str, cfg: CompareConfig,
                   on_segment: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run the comparison and return the JSON-ready report (segments, medians, verdict).

    Args:
        command: the command line, stored in the report.
        cfg: what to measure.
        on_segment: called with the report so far (``"complete": False``) after every segment, so
            a run cut short still leaves its measurements.

    Returns:
        The report: machine, parameters, every segment's numbers, per-system medians and the
        verdict on :data:`COMPARE_TARGETS`.
    """
    from datetime import UTC, datetime

    t0 = time.perf_counter()
    report: dict[str, Any] = {"benchmark": "compare", "command": command,
                              "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
                              "machine": machine_info(), "parameters": _parameters(cfg)}
    models = {"raw": load_engine(cfg.bundle, "onnx")}
    if models["raw"].manifest.int8 is not None:
        models["raw-int8"] = load_engine(cfg.bundle, "onnx-int8")
    segments: list[dict[str, Any]] = []
    try:
        others = {"int8": models["raw-int8"]} if "raw-int8" in models else {}
        workloads = {w: make_workload(w, models["raw"], cfg.images, others) for w in cfg.workloads}
        report["workloads"] = {w.name: {"sizes": w.sizes, "bytes": [len(p.data) for p in w.payloads],
                                        "labels": [p.expected_label for p in w.payloads], "margins": w.margins}
                               for w in workloads.values()}
        with ExitStack() as stack:
            servers = _servers(cfg, stack)
            report["server_startup_s"] = {k: s.startup_seconds for k, s in servers.items()}
            report["served"] = {ENGINE_SYSTEMS[e]: _served(servers[ENGINE_SYSTEMS[e]]) for e in cfg.engines}
            graphs = {name: _GRAPH_OF_ENGINE.get(v["engine"], "fp32") for name, v in report["served"].items()}
            for r in range(cfg.rounds):
                for w in workloads.values():
                    for condition in cfg.conditions:
                        segments.append(_segment(r, w, condition, servers, models, cfg, graphs))
                        if on_segment is not None:
                            on_segment({**report, "complete": False, "segments": segments,
                                        "summary": summarize(segments, cfg), "verdict": verdict(segments, cfg),
                                        "wall_seconds": round(time.perf_counter() - t0, 1)})
    finally:
        for m in models.values():
            m.engine.close()
    report["complete"] = True
    report["segments"] = segments
    report["summary"] = summarize(segments, cfg)
    report["verdict"] = verdict(segments, cfg)
    report["wall_seconds"] = round(time.perf_counter() - t0, 1)
    report["machine"]["load_average_after"] = _loadavg()
    return report


def _served(server: ServerProcess) -> dict[str, Any]:
    """What a deltagate server runs, from its ``/model``: engine, precision and why (``engine_choice``)."""
    import httpx

    body = httpx.get(f"{server.url}/model", timeout=30.0).raise_for_status().json()
    choice = body.get("engine_choice") or {}
    return {"engine": body["engine"], "precision": body["precision"], "reason": choice.get("reason"),
            "detail": choice.get("detail")}


def _parameters(cfg: CompareConfig) -> dict[str, Any]:
    out: dict[str, Any] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(cfg).items()}
    from deltagate.bench.peers import LITSERVE_BATCH_TIMEOUT_S, LITSERVE_MAX_BATCH

    out["litserve"] = {"max_batch_size": LITSERVE_MAX_BATCH, "batch_timeout_s": LITSERVE_BATCH_TIMEOUT_S}
    out["request"] = "multipart, 1 JPEG per request, field 'file'"
    return out


# --- medians and verdict -----------------------------------------------------------------------


def _segments(segments: Sequence[dict[str, Any]], workload: str, condition: str) -> list[dict[str, Any]]:
    return [s for s in segments if s["workload"] == workload and s["condition"] == condition]


def _overhead(seg: dict[str, Any], system: str) -> float | None:
    got = seg["systems"].get(system)
    if got is None:
        return None
    return round(got["c1"]["p50_ms"] - seg["systems"]["raw"]["batch1_p50_ms"], 2)


def _med(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None and v == v]
    return round(statistics.median(vals), 3) if vals else None


def summarize(segments: Sequence[dict[str, Any]], cfg: CompareConfig) -> list[dict[str, Any]]:
    """Median over rounds per (workload, condition, system): images/s at saturation, p50/p99, c=1 overhead."""
    rows: list[dict[str, Any]] = []
    for w in cfg.workloads:
        for c in cfg.conditions:
            segs = _segments(segments, w, c)
            if not segs:
                continue
            raw_rate = [s["systems"]["raw"]["images_per_s"] for s in segs]
            rows.append({"workload": w, "condition": c, "system": "raw", "images_per_s": _med(raw_rate),
                         "ratio_to_raw": 1.0, "c1_p50_ms": _med([s["systems"]["raw"]["batch1_p50_ms"] for s in segs]),
                         "int8_images_per_s": _med([s["systems"]["raw"].get("int8_images_per_s") for s in segs])})
            for name in [n for n in segs[0]["systems"] if n != "raw"]:
                sat = [s["systems"][name]["saturation"] for s in segs]
                rows.append({
                    "workload": w, "condition": c, "system": name,
                    "images_per_s": _med([x["images_per_s"] for x in sat]),
                    "ratio_to_raw": _med([x["images_per_s"] / r for x, r in zip(sat, raw_rate, strict=True)]),
                    "p50_ms": _med([x["p50_ms"] for x in sat]), "p99_ms": _med([x["p99_ms"] for x in sat]),
                    "c1_p50_ms": _med([s["systems"][name]["c1"]["p50_ms"] for s in segs]),
                    "c1_overhead_ms": _med([_overhead(s, name) for s in segs]),
                    "failures": sum(s["systems"][name][lvl][k] for s in segs for lvl in ("c1", "saturation")
                                    for k in ("errors", "lost", "mismatched")),
                })
    return rows


def _per_round(segs: Sequence[dict[str, Any]], fn: Callable[[dict[str, Any]], float | None]) -> list[float | None]:
    out = []
    for s in segs:
        try:
            v = fn(s)
        except KeyError:
            v = None
        out.append(None if v is None or v != v else round(v, 3))  # NaN: nothing to measure (e.g. no 503)
    return out


def _target(name: str, values: list[float | None], ok: Callable[[float], bool], goal: str) -> dict[str, Any]:
    return {"target": name, "goal": goal, "median": _med(values), "per_round": values, "verdict": judge(values, ok)}


def _sat(s: dict[str, Any], system: str) -> dict[str, Any]:
    return dict(s["systems"][system]["saturation"])


def _best_peer(s: dict[str, Any], peers: Sequence[str]) -> dict[str, Any]:
    return max((_sat(s, p) for p in peers if p in s["systems"]), key=lambda x: x["images_per_s"])


def _ratio_to_best_peer(s: dict[str, Any], peers: Sequence[str], system: str = "deltagate") -> float:
    return float(_sat(s, system)["images_per_s"] / _best_peer(s, peers)["images_per_s"])


def _p99_minus_best_peer(s: dict[str, Any], peers: Sequence[str]) -> float:
    return float(_sat(s, "deltagate")["p99_ms"] - _best_peer(s, peers)["p99_ms"])


def _ratio_to(s: dict[str, Any], system: str, measured: str = "deltagate") -> float:
    ref = s["systems"]["raw"]["images_per_s"] if system == "raw" else _sat(s, system)["images_per_s"]
    return float(_sat(s, measured)["images_per_s"] / ref)


def _overhead_over_plain(s: dict[str, Any]) -> float | None:
    mine, plain = _overhead(s, "deltagate"), _overhead(s, "plain")
    return None if mine is None or plain is None else mine - plain


def _at_least(goal: float) -> Callable[[float], bool]:
    return lambda v: v >= goal


def _at_most(goal: float) -> Callable[[float], bool]:
    return lambda v: v <= goal


def verdict(segments: Sequence[dict[str, Any]], cfg: CompareConfig) -> list[dict[str, Any]]:
    """Every target of :data:`COMPARE_TARGETS` per condition, judged round by round (see :func:`judge`)."""
    t = COMPARE_TARGETS
    peers = cfg.peers
    out: list[dict[str, Any]] = []
    for c in cfg.conditions:
        small = _segments(segments, "small", c)
        photo = _segments(segments, "photo", c)
        every = [s for s in segments if s["condition"] == c]
        raw_goal = t["min_ratio_to_raw_quiet"] if c == "quiet" else t["min_ratio_to_raw_neighbour"]
        rows: list[tuple[str, list[float | None], Callable[[float], bool], str]] = []
        if small and peers:
            rows.append(("images/s / best peer (small)", _per_round(small, lambda s: _ratio_to_best_peer(s, peers)),
                         _at_least(t["min_ratio_to_best_peer"]), f">= {t['min_ratio_to_best_peer']}"))
            rows.append(("p99 - best peer's p99 at saturation (small, ms)",
                         _per_round(small, lambda s: _p99_minus_best_peer(s, peers)), _at_most(0.0), "<= 0"))
        if small:
            rows.append(("images/s / raw engine (small)", _per_round(small, lambda s: _ratio_to(s, "raw")),
                         _at_least(raw_goal), f">= {raw_goal}"))
        if small and "plain" in peers:
            rows.append(("c=1 p50 overhead - plain app's (small, ms)", _per_round(small, _overhead_over_plain),
                         _at_most(t["max_c1_overhead_over_plain_ms"]), f"<= {t['max_c1_overhead_over_plain_ms']}"))
        if small and c == "neighbour":
            rows.append(("c=1 p50 overhead (small, ms)", _per_round(small, lambda s: _overhead(s, "deltagate")),
                         _at_most(t["max_c1_overhead_neighbour_ms"]), f"<= {t['max_c1_overhead_neighbour_ms']}"))
        if photo and peers:
            rows.append(("images/s / best peer (photo)", _per_round(photo, lambda s: _ratio_to_best_peer(s, peers)),
                         _at_least(t["min_ratio_to_best_peer"]), f">= {t['min_ratio_to_best_peer']}"))
        if "auto" in (ENGINE_SYSTEMS[e] for e in cfg.engines):  # engine=auto, whatever graph it serves
            if small and peers:
                rows.append(("auto images/s / best peer (small)",
                             _per_round(small, lambda s: _ratio_to_best_peer(s, peers, "auto")),
                             _at_least(t["min_ratio_to_best_peer"]), f">= {t['min_ratio_to_best_peer']}"))
            if small:
                rows.append(("auto images/s / raw float32 engine (small)",
                             _per_round(small, lambda s: _ratio_to(s, "raw", "auto")), _at_least(raw_goal),
                             f">= {raw_goal}"))
            if photo and peers:
                rows.append(("auto images/s / best peer (photo)",
                             _per_round(photo, lambda s: _ratio_to_best_peer(s, peers, "auto")),
                             _at_least(t["min_ratio_to_best_peer"]), f">= {t['min_ratio_to_best_peer']}"))
        if photo and cfg.baseline is not None and "photo" in cfg.baseline_workloads:
            rows.append(("images/s / baseline (photo)", _per_round(photo, lambda s: _ratio_to(s, "baseline")),
                         _at_least(t["min_ratio_to_baseline_photo"]), f">= {t['min_ratio_to_baseline_photo']}"))
        if every and "int8_speedup" in every[0]["systems"]["raw"]:
            rows.append(("int8 / float32 raw images/s",
                         _per_round(every, lambda s: s["systems"]["raw"]["int8_speedup"]),
                         _at_least(t["min_int8_speedup"]), f">= {t['min_int8_speedup']}"))
        if every and "overload" in every[0]:
            rows.append(("503 p99 with the queue full (ms)",
                         _per_round(every, lambda s: s["overload"]["refused_p99_ms"]),
                         _at_most(t["max_503_p99_ms"]), f"<= {t['max_503_p99_ms']}"))
        rows.append(("errors + lost + mismatched (every system)", _per_round(every, _segment_failures),
                     _at_most(t["max_failures"]), f"<= {int(t['max_failures'])}"))
        out += [_target(f"{c}: {name}", values, ok, goal) for name, values, ok, goal in rows]
    return out


def _segment_failures(s: dict[str, Any]) -> float:
    n = sum(v[lvl][k] for name, v in s["systems"].items() if name != "raw" for lvl in ("c1", "saturation")
            for k in ("errors", "lost", "mismatched"))
    if "overload" in s:
        n += sum(s["overload"][k] for k in ("errors", "lost", "mismatched"))
    return float(n)


# --- Markdown ----------------------------------------------------------------------------------


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"
    if isinstance(v, list):
        return ", ".join(_cell(x) for x in v)
    return "–" if v is None else str(v)


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    return markdown_table(columns, [[_cell(r.get(c)) for c in columns] for r in rows])


def markdown_report(report: dict[str, Any]) -> str:
    """The report's verdict and medians as Markdown (what docs/benchmarks.md quotes), from its JSON alone."""
    segs = report["segments"]
    loads = [x for s in segs for x in (s["load_average_before"], s["load_average_after"]) if x]
    lines = [
        f"`{report['command']}`", "",
        *([] if report.get("complete", True) else
          [f"**Cut short: {len(segs)} segments measured** (the run did not finish).", ""]),
        f"Started {report['started_at']}, {report['wall_seconds']} s; {report['machine']['usable_cpus']} usable CPUs; "
        f"1-min load average during the segments {min(x[0] for x in loads):.2f}–{max(x[0] for x in loads):.2f}"
        if loads else "", "",
        *[f"- `{name}` serves `{v['engine']}` ({v['precision']}; {v['reason']}): {v['detail']}"
          for name, v in report.get("served", {}).items()], "",
        "### Targets (per round; met = every round, not met = none, else inconclusive)", "",
        _table(report["verdict"], ("target", "goal", "median", "per_round", "verdict")), "",
        "### Medians over rounds (saturation: c=16 closed loop; c=1 overhead: c=1 p50 - raw batch-1 p50)", "",
        _table(report["summary"], ("workload", "condition", "system", "images_per_s", "ratio_to_raw", "p50_ms",
                                   "p99_ms", "c1_p50_ms", "c1_overhead_ms", "int8_images_per_s", "failures")),
    ]
    over = [{"round": s["round"], "workload": s["workload"], "condition": s["condition"], **s["overload"]}
            for s in segs if "overload" in s]
    if over:
        lines += ["", "### Full queue: 48 fillers keep a queue of 8 full; a probe every 20 ms (latency client side)",
                  "", _table(over, ("round", "workload", "condition", "status_counts", "refused_p50_ms",
                                    "refused_p99_ms", "filler_status_counts", "filler_refused_p99_ms",
                                    "probe_loop_lag_p99_ms", "errors", "lost", "mismatched"))]
    return "\n".join(lines) + "\n"

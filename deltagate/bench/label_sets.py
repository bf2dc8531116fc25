"""``deltagate bench label-sets``: what label sets cost (issue 17 item 7, docs/benchmarks.md).

1. **A new ad-hoc set pays the text forward.** The text graph on labels never seen before, in-process
   (the service's :class:`~models.text_runtime.TextEncoder`), K labels at a time: milliseconds per label.
   Through the server too: at concurrency 1, the latency of a request with a fresh ad-hoc set against the
   same request once its embeddings are cached, in alternation.
2. **What a known set adds to a request**, in-process: ``scores.onnx`` on the images' features and the set's
   embeddings, against the vision forward of the same images (a low-noise bound on the ratio below).
3. **A named (or cached ad-hoc) set against the fixed classes.** One server; closed-loop clients send the
   same single-image requests with the bundle's classes (``fixed``), a named set of as many labels
   (``named``) and a cached ad-hoc set (``ad-hoc``), the order rotated every round. Ratios are taken
   within a round; the verdict is the median over rounds (target: named >= 0.97 x fixed).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from deltagate.bench.http import Payload, run_load, synthetic_png
from deltagate.bench.report import machine_info
from deltagate.server_process import deltagate_server
from models.bundle import load_bundle
from models.label_set_create import create_label_set
from models.text_runtime import TextEncoder
from service.settings import Settings

__all__ = ["TARGET_NAMED_RATIO", "label_sets_report"]

TARGET_NAMED_RATIO = 0.97  # images/s of a named set / images/s of the fixed classes, median over rounds
SET_NAME = "bench"


def _text_forward(bundle: Path, ks: Sequence[int], rounds: int, threads: int | None) -> dict[str, Any]:
    """Milliseconds per label of the text graph on fresh labels, K at a time (median over rounds)."""
    b = load_bundle(bundle)
    encoder = TextEncoder(b, threads)
    mode = b.text_side().default_prompts
    encoder.embed(["warm up", "the session"], mode)
    per_k: dict[str, Any] = {}
    n = 0
    for k in ks:
        ms = []
        for _ in range(rounds):
            labels = [f"bench label {n + i}" for i in range(k)]  # never embedded before
            n += k
            t0 = time.perf_counter()
            encoder.embed(labels, mode)
            ms.append(1000 * (time.perf_counter() - t0))
        per_k[str(k)] = {"median_ms": round(statistics.median(ms), 2), "rounds_ms": [round(x, 2) for x in ms],
                         "median_ms_per_label": round(statistics.median(ms) / k, 2)}
    return {"prompts": mode, "templates": len(b.text_side().templates), "intra_op_threads": threads, "per_k": per_k}


def _added_cost(bundle: Path, k: int, rounds: int, batch_sizes: Sequence[int] = (1, 8)) -> dict[str, Any]:
    """What a label-set request adds to a fixed-class one, in-process: ``scores.onnx`` on B images' features and
    K embeddings (the only extra step once the embeddings are known), against the vision forward of the same
    B images (model.onnx), in alternation; medians over ``rounds`` x 20 calls."""
    import numpy as np

    from deltagate.bench.engine import example_pixels, load_engine
    from models.text_runtime import LabelScorer

    b = load_bundle(bundle)
    model = load_engine(bundle, "onnx")
    scorer = LabelScorer(b)
    png = synthetic_png(320, 240)
    emb = np.random.default_rng(0).standard_normal((k, b.text_side().embed_dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    out: dict[str, Any] = {"k": k}
    try:
        for bs in batch_sizes:
            pixels = example_pixels(model, png, bs)
            feats = model.infer(pixels)["image_features"]
            score_ms, forward_ms = [], []
            for _ in range(rounds):
                t0 = time.perf_counter()
                for _ in range(20):
                    scorer.score(feats, emb)
                score_ms.append(1000 * (time.perf_counter() - t0) / 20)
                t0 = time.perf_counter()
                model.infer(pixels)
                forward_ms.append(1000 * (time.perf_counter() - t0))
            s, f = statistics.median(score_ms), statistics.median(forward_ms)
            out[f"batch_{bs}"] = {"scores_onnx_ms": round(s, 4), "forward_ms": round(f, 2),
                                  "scores_share_of_forward": round(s / f, 5)}
    finally:
        model.engine.close()
    return out


def _first_vs_cached(url: str, png: bytes, k: int, rounds: int) -> dict[str, Any]:
    """Concurrency 1: a fresh ad-hoc set's first request against its second (cached) one, per round."""
    extra = []
    with httpx.Client(base_url=url, timeout=120.0) as client:
        for r in range(rounds):
            labels = [f"fresh {r} label {i}" for i in range(k)]
            times = []
            for _ in range(2):
                t0 = time.perf_counter()
                resp = client.post("/classify", files={"file": ("b.png", png, "image/png")}, data={"labels": labels})
                times.append(time.perf_counter() - t0)
                resp.raise_for_status()
            extra.append(1000 * (times[0] - times[1]))
    return {"k": k, "rounds": rounds, "first_minus_cached_ms": [round(x, 2) for x in extra],
            "median_first_minus_cached_ms": round(statistics.median(extra), 2),
            "median_ms_per_label": round(statistics.median(extra) / k, 2)}


def label_sets_report(command: str, settings: Settings, *, rounds: int = 5, seconds: float = 5.0,
                      concurrency: int = 8, ks: Sequence[int] = (2, 10, 50), warmup_s: float = 2.0,
                      image_size: tuple[int, int] = (320, 240),
                      port_range: tuple[int, int] | None = None) -> dict[str, Any]:
    """The report of the module docstring's two measurements (JSON-ready).

    Args:
        command: the command line, stored in the report.
        settings: the server's settings (its bundle must have a text side with a default rule).
        rounds: interleaved rounds of the throughput comparison (and of the text-forward timings).
        seconds: measured window per condition and round.
        concurrency: closed-loop clients of the throughput comparison.
        ks: label counts of the text-forward timing.
        warmup_s: unmeasured lead-in per condition.
        image_size: the request's PNG.
        port_range: the server's port range (None: the OS picks).
    """
    t_start = time.perf_counter()
    bundle = load_bundle(settings.bundle_path)
    classes = list(bundle.manifest.classes)
    png = synthetic_png(*image_size)
    report: dict[str, Any] = {"command": command, "kind": "label-sets", "machine": machine_info(),
                              "settings": settings.model_dump(mode="json", exclude={"api_key", "admin_key"}),
                              "parameters": {"rounds": rounds, "seconds": seconds, "concurrency": concurrency,
                                             "ks": list(ks), "warmup_s": warmup_s, "image_size": list(image_size),
                                             "labels": classes}}
    report["text_forward"] = _text_forward(settings.bundle_path, ks, rounds, settings.intra_op_threads)
    report["added_cost"] = _added_cost(settings.bundle_path, len(classes), rounds)
    assert settings.label_sets_dir is not None
    create_label_set(settings.bundle_path, SET_NAME, [f"{c} set" for c in classes], out_dir=settings.label_sets_dir)
    conditions = {
        "fixed": Payload(png),
        "named": Payload(png, path=f"/classify?label_set={SET_NAME}"),
        "ad-hoc": Payload(png, fields=tuple(("labels", f"{c} ad hoc") for c in classes)),
    }
    rows: list[dict[str, Any]] = []
    with deltagate_server(settings, port_range=port_range) as server:
        report["server_startup_s"] = server.startup_seconds
        rule = bundle.text_side().rules.get(bundle.text_side().default_prompts)
        k_first = min(max(ks), rule.ks[-1]) if rule is not None else max(ks)  # the rule covers ad-hoc sets this large
        report["first_request"] = _first_vs_cached(server.url, png, k_first, rounds)
        for r in range(rounds):
            names = list(conditions)
            order = names[r % len(names):] + names[: r % len(names)]  # rotated each round
            for name in order:
                load = run_load(server.url, [conditions[name]], concurrency, seconds, warmup_s,
                                settings.request_timeout_s)
                rows.append({"round": r, "condition": name, **load.as_row(), "status_counts": load.status_counts})
    by = {(row["round"], row["condition"]): row["requests_per_s"] for row in rows}
    ratios = {cond: [by[(r, cond)] / by[(r, "fixed")] if by[(r, "fixed")] else None for r in range(rounds)]
              for cond in ("named", "ad-hoc")}
    report["throughput"] = rows
    report["ratios_to_fixed"] = {cond: {"per_round": [round(x, 4) if x is not None else None for x in v],
                                        "median": round(statistics.median([x for x in v if x is not None]), 4)}
                                 for cond, v in ratios.items()}
    report["verdict"] = {"named_over_fixed": report["ratios_to_fixed"]["named"]["median"],
                         "target": TARGET_NAMED_RATIO,
                         "met": report["ratios_to_fixed"]["named"]["median"] >= TARGET_NAMED_RATIO,
                         "errors": sum(row["errors"] for row in rows)}
    report["wall_seconds"] = round(time.perf_counter() - t_start, 1)
    report["machine"]["load_average_after"] = machine_info()["load_average_1_5_15"]
    return report

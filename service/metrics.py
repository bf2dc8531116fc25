"""Prometheus metrics: their definitions, and recording into them.

Metrics live in a registry owned by the app (not prometheus-client's global one), so several apps
in one process (tests) do not collide. With ``workers > 1`` the server runs prometheus-client's
multiprocess mode: every worker writes its values to files in one directory, and a scrape of any
worker reads all of them (:meth:`ServiceMetrics.exposition`), so counters and histograms add up
over the workers; gauges say in their ``multiprocess_mode`` how they combine. The per-request
metrics are recorded by :class:`service.middleware.RequestTelemetryMiddleware`; log lines are
configured in :mod:`service.logs`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest, multiprocess, values

from models.bundle import BundleManifest
from models.label_sets import AD_HOC

__all__ = ["ServiceMetrics", "mark_dead_processes", "gate_score_buckets"]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Coarse fixed ΔEnergy bounds (ΔEnergy >= 0 for the default reset logit; CLIP logits are ~100 x cosine).
DELTA_ENERGY_GRID = (0.0, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
# Calibration quantile levels added as bucket bounds: with no drift, each bucket's share of live
# traffic matches its share of the ID calibration scores.
DRIFT_LEVELS = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
BUNDLE_LABEL_SET = "bundle"  # the label_set label of requests answered with the bundle's own classes
_POOLED_LABEL_SETS = frozenset({AD_HOC, "other"})  # no per-class series: their label text is unbounded


class ServiceMetrics:
    """Every metric the service exports. Names follow Prometheus conventions (unit suffixes).

    Args:
        max_batch_size: largest batch (the batch-size histogram's top bucket).
        registry: where to register; a new private registry if omitted.
        multiprocess_dir: the multiprocess directory when several worker processes serve (the server
            sets ``PROMETHEUS_MULTIPROC_DIR`` to it before the workers start); None in one process.

    Raises:
        RuntimeError: ``multiprocess_dir`` is given but prometheus-client was imported without
            ``PROMETHEUS_MULTIPROC_DIR``, so the values would never reach the files.
    """

    def __init__(
        self, max_batch_size: int, registry: CollectorRegistry | None = None, multiprocess_dir: Path | None = None
    ) -> None:
        if multiprocess_dir is not None and values.ValueClass is values.MutexValue:
            raise RuntimeError("multiprocess metrics need PROMETHEUS_MULTIPROC_DIR set before prometheus_client "
                               "is imported (service.server does this for workers > 1)")
        self.multiprocess_dir = multiprocess_dir
        if multiprocess_dir is not None:
            mark_dead_processes(multiprocess_dir)  # a crashed worker's live gauges (its replacement is us)
        self.registry = registry or CollectorRegistry()
        r = self.registry
        labels = ["route", "method", "status"]
        self.requests = Counter("deltagate_http_requests", "HTTP requests.", labels, registry=r)
        self.request_duration = Histogram(
            "deltagate_http_request_duration_seconds", "HTTP request latency.", labels,
            buckets=LATENCY_BUCKETS, registry=r,
        )
        batch_buckets = sorted({2**i for i in range(11) if 2**i < max_batch_size} | {max_batch_size})
        self.batch_size = Histogram(
            "deltagate_batch_size_images", "Images per forward pass.", buckets=batch_buckets, registry=r
        )
        # Several workers: queued images add up over the live workers; ready is 1 only if all are.
        self.queue_depth = Gauge("deltagate_queue_depth_images", "Images waiting for a forward pass.", registry=r,
                                 multiprocess_mode="livesum")
        self.body_bytes = Gauge("deltagate_request_body_bytes", "Bytes of request bodies held in memory (received, "
                                "request not ended); bounded by max_body_bytes_in_flight.", registry=r,
                                multiprocess_mode="livesum")
        self.inference_duration = Histogram(
            "deltagate_inference_duration_seconds", "Forward pass time per batch.",
            buckets=LATENCY_BUCKETS, registry=r,
        )
        # label_set: "bundle" (the bundle's classes), a named set (the first metrics_label_sets ones a worker
        # answers with), "other" (later named sets) or "ad-hoc"; the last two count under predicted_class
        # "(other)" / "(ad-hoc)", so request-time label text never becomes a label value.
        self.images = Counter(
            "deltagate_images_classified", "Images classified, by label set and predicted class.",
            ["label_set", "predicted_class"], registry=r,
        )
        self.ood_flags = Counter(
            "deltagate_ood_flags", "Images flagged out-of-distribution, by label set and predicted class.",
            ["label_set", "predicted_class"], registry=r,
        )
        self.image_errors = Counter(
            "deltagate_image_errors", "Images of answered requests that could not be classified (on_error=skip), "
            "by error code.", ["code"], registry=r,
        )
        self.ready = Gauge("deltagate_ready", "1 once the model is loaded and warmed up.", registry=r,
                           multiprocess_mode="livemin")
        self.connection_events = Counter(
            "deltagate_connection_events", "Connection-level refusals and cut-offs (service.connections), by event.",
            ["event"], registry=r,
        )
        self.model_info = _ModelInfo(r, multiprocess_dir is not None)
        # buckets depend on the bundle: see bind_model
        self.gate_score: Histogram | None = None
        self.delta_energy: Histogram | None = None  # only when the gate score is not ΔEnergy itself

    def bind_model(self, manifest: BundleManifest, engine_facts: dict[str, str]) -> None:
        """Create the model-dependent metrics once the bundle is known.

        Args:
            manifest: the bundle's manifest as stored (:attr:`~models.bundle.Bundle.stored_manifest`, not a
                graph's view): the gate histogram's bounds hold every graph's calibration (:func:`gate_score_buckets`).
            engine_facts: the ``deltagate_model_info`` labels of the engine that serves.
        """
        self.model_info.set({"name": manifest.name, "version": manifest.version, **engine_facts})
        for cls in manifest.classes:  # export zeros for every class, so rates exist from the start
            self.images.labels(label_set=BUNDLE_LABEL_SET, predicted_class=cls)
            self.ood_flags.labels(label_set=BUNDLE_LABEL_SET, predicted_class=cls)
        if self.gate_score is None:
            self.gate_score = Histogram(
                "deltagate_gate_score", "The bundle's gate score of classified images (is_ood = below the "
                "threshold; higher = more in-distribution).", buckets=gate_score_buckets(manifest),
                registry=self.registry,
            )
            # With the default gate the gate score is ΔEnergy: a second histogram would record the same values.
            gated_on_delta_energy = manifest.calibration is None or manifest.calibration.score == "delta_energy"
            if not gated_on_delta_energy:
                self.delta_energy = Histogram(
                    "deltagate_delta_energy", "ΔEnergy of classified images (higher = more in-distribution); "
                    "exported only when the gate score is another score.", buckets=DELTA_ENERGY_GRID,
                    registry=self.registry,
                )

    def exposition(self) -> bytes:
        """The scrape body: this process's registry, or every worker's files in multiprocess mode."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=str(self.multiprocess_dir))
        return generate_latest(merged)

    def close(self) -> None:
        """On worker exit: drop this process's live gauges (its counters stay: totals never go back)."""
        if self.multiprocess_dir is not None:
            multiprocess.mark_process_dead(os.getpid(), str(self.multiprocess_dir))

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.request_duration.labels(route, method, str(status)).observe(seconds)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference_duration.observe(seconds)

    def observe_image_errors(self, codes: Sequence[str]) -> None:
        for code in codes:
            self.image_errors.labels(code=code).inc()

    def observe_images(self, label_set: str, labels: Sequence[str], gate_scores: Sequence[float],
                       delta_energies: Sequence[float], is_ood: Sequence[bool]) -> None:
        """One request's results. The gate-score histograms observe the bundle's classes only: their buckets
        are the bundle's calibration, and a label set's scores (another K, another threshold) would move the
        drift alerts that read them."""
        per_class = label_set not in _POOLED_LABEL_SETS
        for label, score, de, ood in zip(labels, gate_scores, delta_energies, is_ood, strict=True):
            cls = label if per_class else f"({label_set})"
            self.images.labels(label_set=label_set, predicted_class=cls).inc()
            if ood:
                self.ood_flags.labels(label_set=label_set, predicted_class=cls).inc()
            if label_set != BUNDLE_LABEL_SET:
                continue
            if self.gate_score is not None:
                self.gate_score.observe(score)
            if self.delta_energy is not None:
                self.delta_energy.observe(de)


class _ModelInfo:
    """``deltagate_model_info{name, version, engine, device, ...} 1``.

    One process: a Prometheus Info metric. Several: Info has no multiprocess support in
    prometheus-client, so the same sample comes from a gauge (value 1, max over live workers),
    created at the first :meth:`set` because its labels are the facts' keys.
    """

    _NAME, _DOC = "deltagate_model", "The loaded model bundle and engine."

    def __init__(self, registry: CollectorRegistry, multiprocess_mode: bool) -> None:
        self._registry = registry
        self._info = None if multiprocess_mode else Info(self._NAME, self._DOC, registry=registry)
        self._gauge: Gauge | None = None

    def set(self, facts: dict[str, str]) -> None:
        if self._info is not None:
            self._info.info(facts)
            return
        if self._gauge is None:
            self._gauge = Gauge(f"{self._NAME}_info", self._DOC, sorted(facts), registry=self._registry,
                                multiprocess_mode="livemax")
        self._gauge.labels(**facts).set(1)


def mark_dead_processes(directory: Path) -> None:
    """Drop the live-gauge files of worker processes that are gone (crashed without cleaning up)."""
    pids = {int(m.group(1)) for f in directory.glob("gauge_live*_*.db")
            if (m := re.search(r"_(\d+)\.db$", f.name)) is not None}
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            multiprocess.mark_process_dead(pid, str(directory))
        except PermissionError:  # alive, another user's
            pass


def gate_score_buckets(manifest: BundleManifest) -> list[float]:
    """Bounds of the gate score histogram: the threshold and the calibration quantiles (for drift:
    with no drift each bucket's share of traffic matches calibration), and the coarse ΔEnergy grid.

    The calibrations are of the bundle's gate score (``calibration.score``), of every graph the bundle
    carries (:meth:`~models.bundle.BundleManifest.graph_calibrations`: float32 and the int8 graph's
    own), so the bounds are the same whichever graph serves (``engine=auto`` serves int8 on the CPU,
    the images run ``onnx``): the alert rules (deploy/alerts) select buckets by these bounds, pods on
    different engines can be summed, and the served graph's threshold and median are always among
    them. ``manifest`` is the manifest as stored (:attr:`~models.bundle.Bundle.stored_manifest`).
    ``deltagate_delta_energy``, exported only when the gate score is not ΔEnergy, has the grid alone.
    """
    bounds = set(DELTA_ENERGY_GRID)
    for calib in manifest.graph_calibrations():
        bounds.add(calib.threshold)
        bounds.update(np.interp(DRIFT_LEVELS, calib.quantile_levels, calib.quantile_values).tolist())
    return sorted({round(float(b), 6) for b in bounds})  # rounding can merge the threshold with a quantile

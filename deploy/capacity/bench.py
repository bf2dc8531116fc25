"""Per-pod numbers derived from one ``deltagate bench service`` run (``results/bench/*.json``).

One place turns the measured JSON into what the deployment needs: the pod's service-time model
(for the capacity simulation), the HPA's per-pod targets (``deploy/k8s/base/hpa.yaml``) and the
p99 alert bound (``deploy/alerts``). Tests recompute the manifests' numbers from here.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
# The CPU reference run: ViT-B-32 on ONNX Runtime, 2 vCPUs, max_batch_size 8 (docs/benchmarks.md).
DEFAULT_BENCH = ROOT / "results/bench/vitb32-onnx-cpu.json"
# Share of the measured saturation throughput the HPA aims each pod at: 30 % headroom absorbs a
# step in load during the ~1 min the metrics pipeline and a pod start take to react.
TARGET_UTILISATION = 0.7


def load_bench(path: Path = DEFAULT_BENCH) -> dict[str, Any]:
    """The bench JSON, checked to be a service run."""
    data: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    if data.get("benchmark") != "service" or not data.get("service"):
        raise ValueError(f"{path}: not a `deltagate bench service` result")
    return data


def _rows(data: dict[str, Any], concurrency: int) -> list[dict[str, Any]]:
    return [r for r in data["service"] if r["concurrency"] == concurrency]


@dataclass(frozen=True)
class PodModel:
    """Service time of one pod: a forward of ``b`` images takes ``fixed_s + per_image_s * b``.

    Attributes:
        fixed_s: per-forward cost independent of batch size (s).
        per_image_s: cost per image in a forward (s).
        overhead_s: time a request spends outside its forward (HTTP, parsing, decode, hand-offs).
        max_batch_size: most images per forward.
        max_queue_size: images waiting beyond which the pod answers 503.
        request_timeout_s: deadline of a request; past it the service answers 504.
        startup_s: process start to ``/readyz`` 200, as measured by the bench.
    """

    fixed_s: float
    per_image_s: float
    overhead_s: float
    max_batch_size: int
    max_queue_size: int
    request_timeout_s: float
    startup_s: float

    def forward_s(self, batch: int) -> float:
        """Seconds one forward of ``batch`` images takes."""
        return self.fixed_s + self.per_image_s * batch

    @property
    def capacity_per_s(self) -> float:
        """Images/s of a pod that always runs full batches."""
        return self.max_batch_size / self.forward_s(self.max_batch_size)


def pod_model(data: dict[str, Any]) -> PodModel:
    """Fit the pod's service time on the server-side forward times of the bench run.

    The line goes through (1, median mean_forward_ms at concurrency 1) and (median mean batch size,
    median mean_forward_ms) at the highest concurrency: both are timed inside the server under its
    own load, unlike the raw engine passes. ``overhead_s`` is the paired median time outside the
    forward at concurrency 1 (``verdict.concurrency1_mean_outside_forward_ms_median``).
    """
    top = max(r["concurrency"] for r in data["service"])
    one, full = _rows(data, 1), _rows(data, top)
    f1 = statistics.median(r["mean_forward_ms"] for r in one) / 1000.0
    fb = statistics.median(r["mean_forward_ms"] for r in full) / 1000.0
    b = statistics.median(r["mean_batch_size"] for r in full)
    per_image = (fb - f1) / (b - 1.0)
    settings = data["settings"]
    return PodModel(
        fixed_s=f1 - per_image,
        per_image_s=per_image,
        overhead_s=data["verdict"]["concurrency1_mean_outside_forward_ms_median"] / 1000.0,
        max_batch_size=int(settings["max_batch_size"]),
        max_queue_size=int(settings["max_queue_size"]),
        request_timeout_s=float(settings["request_timeout_s"]),
        startup_s=float(data["server_startup_s"]),
    )


def saturation_requests_per_s(data: dict[str, Any]) -> float:
    """Median requests/s over the rounds at the highest concurrency (single-image requests)."""
    top = max(r["concurrency"] for r in data["service"])
    return float(statistics.median(r["requests_per_s"] for r in _rows(data, top)))


def hpa_targets(data: dict[str, Any], utilisation: float = TARGET_UTILISATION) -> dict[str, float]:
    """The HPA's per-pod AverageValue targets, keyed by custom metric name.

    - ``deltagate_classify_requests_per_second``: ``utilisation`` x saturation requests/s,
      rounded to a milli-unit (the resolution of a Kubernetes quantity);
    - ``deltagate_queue_depth_images``: one full batch waiting.
    """
    rps = round(utilisation * saturation_requests_per_s(data), 3)
    return {
        "deltagate_classify_requests_per_second": rps,
        "deltagate_queue_depth_images": float(data["settings"]["max_batch_size"]),
    }


def p99_bound_s(data: dict[str, Any]) -> float:
    """The p99 alert bound: the worst p99 at saturation, rounded up to a whole second."""
    top = max(r["concurrency"] for r in data["service"])
    return float(math.ceil(max(r["p99_ms"] for r in _rows(data, top)) / 1000.0))

"""Discrete-event simulation of a traffic ramp against the deltagate HPA policy.

No cluster runs here, so this replays what the manifests would do: Poisson arrivals of
single-image ``POST /classify`` requests, spread at random over the ready pods (kube-proxy's
iptables mode), each pod a batcher that runs one forward at a time over up to ``max_batch_size``
waiting images with the service times measured by ``deltagate bench service``
(:mod:`deploy.capacity.bench`); a full queue answers 503, an image past its deadline 504.
Prometheus scrapes every pod each ``scrape_interval_s``; the Prometheus Adapter's queries (rate
over 1 min, average over 1 min) feed the HPA, which syncs every ``sync_period_s`` with the
Kubernetes replica calculator (tolerance, pods without metrics counted as 0 on scale-up) and the
``behavior`` of ``deploy/k8s/base/hpa.yaml`` (stabilization windows, rate limits); new pods are
ready ``pod_start_s`` after the HPA asks for them; removed pods stop receiving traffic and finish
their queue.

Hand-written on a heap (``heapq``) rather than with simpy: the model is five event kinds and no
process interaction, and the deploy tooling then needs nothing beyond numpy/PyYAML (matplotlib
only for the plot).

Simplifications (docs/capacity.md): requests carry one image; ``max_wait_ms`` (5 ms against
forwards of 0.3-1.7 s) is ignored; clients do not retry a 503; Prometheus' rate extrapolation is
ignored; the Service spreads requests evenly at random (no least-connections).

Usage::

    python -m deploy.capacity.simulate --out results/capacity/ramp.json --plot docs/capacity-ramp.png
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import logging
import math
import sys
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from deploy.capacity.bench import (  # noqa: E402
    DEFAULT_BENCH,
    PodModel,
    load_bench,
    p99_bound_s,
    pod_model,
)

logger = logging.getLogger("deltagate.deploy.capacity")

HPA_MANIFEST = ROOT / "deploy/k8s/base/hpa.yaml"
POD_PATCH = ROOT / "deploy/k8s/overlays/cpu/deployment-patch.yaml"
EPS = 1e-9
# A removed pod serves until SIGKILL: preStop sleep (5 s) + DELTAGATE_GRACEFUL_SHUTDOWN_S (30 s),
# both from deploy/k8s/base/deployment.yaml (terminationGracePeriodSeconds 45 is above that).
DRAIN_S = 35.0


# --- the policy, read from the manifest -----------------------------------------------------------
@dataclass(frozen=True)
class ScalePolicy:
    """One ``behavior.scaleUp/scaleDown`` policy."""

    type: str  # "Pods" or "Percent"
    value: int
    period_s: float


@dataclass(frozen=True)
class HpaPolicy:
    """The parts of an ``autoscaling/v2`` HPA the simulation replays.

    Attributes:
        min_replicas, max_replicas: bounds.
        targets: per-pod AverageValue target of each Pods metric.
        up_window_s, down_window_s: stabilization windows.
        up_policies, down_policies: rate limits; ``select_*`` is "Max" or "Min".
        tolerance: the controller's ``--horizontal-pod-autoscaler-tolerance`` (default 0.1).
        sync_period_s: ``--horizontal-pod-autoscaler-sync-period`` (default 15 s).
    """

    min_replicas: int
    max_replicas: int
    targets: dict[str, float]
    up_window_s: float = 0.0
    down_window_s: float = 300.0
    up_policies: tuple[ScalePolicy, ...] = ()
    down_policies: tuple[ScalePolicy, ...] = ()
    select_up: str = "Max"
    select_down: str = "Max"
    tolerance: float = 0.1
    sync_period_s: float = 15.0


def parse_quantity(value: str | int | float) -> float:
    """A Kubernetes quantity ("3220m", "8", 8) as a float."""
    text = str(value)
    return float(text[:-1]) / 1000.0 if text.endswith("m") else float(text)


def load_hpa_policy(path: Path = HPA_MANIFEST) -> HpaPolicy:
    """Read min/max replicas, Pods-metric targets and behavior from an HPA manifest."""
    spec = yaml.safe_load(Path(path).read_text(encoding="utf-8"))["spec"]
    targets = {
        m["pods"]["metric"]["name"]: parse_quantity(m["pods"]["target"]["averageValue"])
        for m in spec["metrics"]
        if m["type"] == "Pods"
    }
    behavior = spec.get("behavior", {})

    def policies(side: dict[str, Any]) -> tuple[ScalePolicy, ...]:
        return tuple(
            ScalePolicy(p["type"], int(p["value"]), float(p["periodSeconds"])) for p in side.get("policies", [])
        )

    up, down = behavior.get("scaleUp", {}), behavior.get("scaleDown", {})
    return HpaPolicy(
        min_replicas=int(spec.get("minReplicas", 1)),
        max_replicas=int(spec["maxReplicas"]),
        targets=targets,
        up_window_s=float(up.get("stabilizationWindowSeconds", 0)),
        down_window_s=float(down.get("stabilizationWindowSeconds", 300)),
        up_policies=policies(up),
        down_policies=policies(down),
        select_up=up.get("selectPolicy", "Max"),
        select_down=down.get("selectPolicy", "Max"),
    )


def apply_pod_env(model: PodModel, patch: Path = POD_PATCH) -> PodModel:
    """The pod's batching settings as the overlay sets them (``DELTAGATE_*`` env of the patch)."""
    doc = yaml.safe_load(Path(patch).read_text(encoding="utf-8"))
    env = {e["name"]: e.get("value") for c in doc["spec"]["template"]["spec"]["containers"] for e in c.get("env", [])}
    fields = {"DELTAGATE_MAX_BATCH_SIZE": ("max_batch_size", int), "DELTAGATE_MAX_QUEUE_SIZE": ("max_queue_size", int),
              "DELTAGATE_REQUEST_TIMEOUT_S": ("request_timeout_s", float)}
    changes = {name: cast(env[key]) for key, (name, cast) in fields.items() if env.get(key) is not None}
    return replace(model, **changes)


# --- the Kubernetes replica calculator ----------------------------------------------------------
def metric_replicas(
    current: int, usages: dict[int, float], missing: int, target: float, tolerance: float
) -> int:
    """Replicas one Pods metric proposes (``calcPlainMetricReplicas`` of the HPA controller).

    Args:
        current: the Deployment's replicas now.
        usages: metric value of each pod that reports one.
        missing: pods without a value yet (starting): 0 usage on scale-up, the target on scale-down.
        target: the per-pod AverageValue target.
        tolerance: no change while |usage/target - 1| <= tolerance.

    Returns:
        The proposed replica count (before behavior limits and min/max).
    """
    if not usages:
        return current
    ratio = sum(usages.values()) / len(usages) / target
    if missing == 0:
        if abs(1.0 - ratio) <= tolerance:
            return current
        return math.ceil(ratio * len(usages) - EPS)
    filler = 0.0 if ratio > 1.0 else target
    total = sum(usages.values()) + filler * missing
    n = len(usages) + missing
    new_ratio = total / n / target
    if abs(1.0 - new_ratio) <= tolerance or (ratio < 1.0 < new_ratio) or (ratio > 1.0 > new_ratio):
        return current
    proposal = math.ceil(new_ratio * n - EPS)
    if (new_ratio < 1.0 and proposal > current) or (new_ratio > 1.0 and proposal < current):
        return current
    return proposal


def rate_limited(policy: HpaPolicy, current: int, desired: int, history: list[tuple[float, int]], now: float) -> int:
    """Apply ``behavior`` rate limits; ``history`` holds (time, replica change) of past scalings."""

    def changed_within(period_s: float, sign: int) -> int:
        return sum(d for t, d in history if now - t < period_s and d * sign > 0)

    if desired > current:
        limits = []
        for p in policy.up_policies:
            start = current - changed_within(p.period_s, +1)
            limits.append(start + p.value if p.type == "Pods" else math.ceil(start * (1 + p.value / 100.0)))
        if limits:
            desired = min(desired, max(limits) if policy.select_up == "Max" else min(limits))
    elif desired < current:
        limits = []
        for p in policy.down_policies:
            start = current - changed_within(p.period_s, -1)  # removed pods count back in
            limits.append(start - p.value if p.type == "Pods" else math.floor(start * (1 - p.value / 100.0)))
        if limits:
            desired = max(desired, min(limits) if policy.select_down == "Max" else max(limits))
    return max(policy.min_replicas, min(policy.max_replicas, desired))


# --- the simulated world ------------------------------------------------------------------------
@dataclass(frozen=True)
class Scenario:
    """Offered load and the metrics pipeline.

    Attributes:
        base_rate: requests/s before and after the surge.
        factor: peak / base.
        steady_s: seconds at the base rate before the ramp (the HPA settles).
        ramp_s: seconds of the linear ramp up (and down).
        hold_s: seconds at the peak.
        tail_s: seconds at the base rate after the ramp down.
        pod_start_s: HPA decision to a ready pod (scheduling, image pull, start-up, probe).
        scrape_interval_s: Prometheus scrape interval (ServiceMonitor).
        window_s: the adapter's rate / avg_over_time window.
        initial_replicas: pods at t = 0 (None: what the base rate needs, at least minReplicas).
        seed: random seed of the arrivals and the routing.
    """

    base_rate: float
    factor: float = 10.0
    steady_s: float = 300.0
    ramp_s: float = 60.0
    hold_s: float = 900.0
    tail_s: float = 900.0
    pod_start_s: float = 30.0
    scrape_interval_s: float = 15.0
    window_s: float = 60.0
    initial_replicas: int | None = None
    seed: int = 0

    @property
    def duration_s(self) -> float:
        return self.steady_s + 2 * self.ramp_s + self.hold_s + self.tail_s

    @property
    def ramp_start_s(self) -> float:
        return self.steady_s

    def rate(self, t: float) -> float:
        """Offered requests/s at time ``t``."""
        peak = self.base_rate * self.factor
        up_end = self.steady_s + self.ramp_s
        down_start = up_end + self.hold_s
        if t < self.steady_s:
            return self.base_rate
        if t < up_end:
            return self.base_rate + (peak - self.base_rate) * (t - self.steady_s) / self.ramp_s
        if t < down_start:
            return peak
        if t < down_start + self.ramp_s:
            return peak - (peak - self.base_rate) * (t - down_start) / self.ramp_s
        return self.base_rate


@dataclass
class Pod:
    id: int
    ready_at: float
    queue: deque[float] = field(default_factory=deque)  # arrival times of waiting requests
    busy_until: float | None = None  # end of the running forward
    in_forward: list[float] = field(default_factory=list)
    arrivals: int = 0  # counter scraped for the rate metric (every status)
    removed_at: float | None = None
    scrapes: deque[tuple[float, int, int]] = field(default_factory=deque)  # (t, arrivals, queue)


@dataclass
class Outcome:
    """Per-request results and sampled time series of one run."""

    arrival: np.ndarray  # (N,) request arrival times
    status: np.ndarray  # (N,) 200, 503, 504, or 0 = dropped by a scale-down
    latency: np.ndarray  # (N,) seconds to the answer (nan for 503 and dropped)
    series: dict[str, list[float]]  # every scrape: t, offered, ready, desired, queue_total, queue_max


def simulate(model: PodModel, policy: HpaPolicy, scenario: Scenario, autoscale: bool = True) -> Outcome:
    """Run the scenario; ``autoscale=False`` keeps the initial replicas (for known-answer tests)."""
    rng = np.random.default_rng(scenario.seed)
    seq = itertools.count()  # heap tie-break
    events: list[tuple[float, int, str, int]] = []

    def push(t: float, kind: str, pod_id: int = -1) -> None:
        heapq.heappush(events, (t, next(seq), kind, pod_id))

    pods: dict[int, Pod] = {}
    next_id = itertools.count()
    n0 = scenario.initial_replicas
    if n0 is None:
        rps_target = policy.targets.get("deltagate_classify_requests_per_second", model.capacity_per_s)
        n0 = max(policy.min_replicas, math.ceil(scenario.base_rate / rps_target))
    for _ in range(n0):
        pid = next(next_id)
        pods[pid] = Pod(pid, ready_at=0.0)

    arrival_t: list[float] = []
    status: list[int] = []
    latency: list[float] = []
    series: dict[str, list[float]] = {k: [] for k in ("t", "offered", "ready", "desired", "queue_total", "queue_max")}
    history: list[tuple[float, int]] = []  # scaling events for rate limits
    recommendations: deque[tuple[float, int]] = deque()
    desired = n0

    def record(idx_time: float, code: int, lat: float) -> None:
        arrival_t.append(idx_time)
        status.append(code)
        latency.append(lat)

    def start_forward(pod: Pod, now: float) -> None:
        batch: list[float] = []
        while pod.queue and len(batch) < model.max_batch_size:
            t_arr = pod.queue.popleft()
            if now - t_arr > model.request_timeout_s:  # the batcher skips expired images
                record(t_arr, 504, model.request_timeout_s)
                continue
            batch.append(t_arr)
        if batch:
            pod.in_forward = batch
            pod.busy_until = now + model.forward_s(len(batch))
            push(pod.busy_until, "done", pod.id)

    def routable(now: float) -> list[Pod]:
        return [p for p in pods.values() if p.removed_at is None and p.ready_at <= now]

    # arrivals: a non-homogeneous Poisson process by thinning
    peak_rate = scenario.base_rate * max(scenario.factor, 1.0)
    push(float(rng.exponential(1.0 / peak_rate)), "arrival")
    push(0.0, "scrape")
    if autoscale:
        push(policy.sync_period_s / 2, "sync")  # controller phase: mid-way between scrapes

    while events:
        now, _, kind, pid = heapq.heappop(events)
        if now > scenario.duration_s and kind in ("arrival", "scrape", "sync"):
            continue  # no new work; forwards still drain
        if kind == "arrival":
            push(now + float(rng.exponential(1.0 / peak_rate)), "arrival")
            if rng.random() * peak_rate > scenario.rate(now):
                continue
            ready = routable(now)
            if not ready:
                record(now, 503, math.nan)
                continue
            pod = ready[int(rng.integers(len(ready)))]
            pod.arrivals += 1
            if len(pod.queue) >= model.max_queue_size:
                record(now, 503, math.nan)
                continue
            pod.queue.append(now)
            if pod.busy_until is None:
                start_forward(pod, now)
        elif kind == "done":
            pod = pods[pid]
            killed = pod.removed_at is not None and now > pod.removed_at + DRAIN_S
            for t_arr in pod.in_forward:
                lat = now - t_arr + model.overhead_s
                record(t_arr, 0 if killed else 504 if lat > model.request_timeout_s else 200, lat)
            pod.in_forward, pod.busy_until = [], None
            if killed:  # SIGKILL at the end of the grace period: what is left is lost
                for t_arr in pod.queue:
                    record(t_arr, 0, math.nan)
                pod.queue.clear()
            start_forward(pod, now)
            if pod.busy_until is None and pod.removed_at is not None:
                del pods[pid]  # drained: the process exits
        elif kind == "scrape":
            push(now + scenario.scrape_interval_s, "scrape")
            for pod in pods.values():
                if pod.removed_at is None and pod.ready_at <= now:
                    pod.scrapes.append((now, pod.arrivals, len(pod.queue)))
                    while pod.scrapes and now - pod.scrapes[0][0] > scenario.window_s + EPS:
                        pod.scrapes.popleft()
            queues = [len(p.queue) for p in pods.values()]
            sample = {"t": now, "offered": scenario.rate(now), "ready": len(routable(now)), "desired": desired,
                      "queue_total": sum(queues), "queue_max": max(queues, default=0)}
            for key, value in sample.items():
                series[key].append(float(value))
        elif kind == "sync":
            push(now + policy.sync_period_s, "sync")
            desired = _hpa_sync(policy, scenario, pods, now, history, recommendations)
            live = sorted((p for p in pods.values() if p.removed_at is None), key=lambda p: p.ready_at)
            if desired > len(live):
                for _ in range(desired - len(live)):
                    new = next(next_id)
                    pods[new] = Pod(new, ready_at=now + scenario.pod_start_s)
                history.append((now, desired - len(live)))
            elif desired < len(live):
                # the ReplicaSet removes not-ready pods first, then the newest
                victims = sorted(live, key=lambda p: (p.ready_at <= now, -p.ready_at))[: len(live) - desired]
                for pod in victims:
                    pod.removed_at = now
                    if pod.busy_until is None:
                        for t_arr in pod.queue:  # cannot happen: an idle pod has an empty queue
                            record(t_arr, 0, math.nan)
                        del pods[pod.id]
                history.append((now, desired - len(live)))

    order = np.argsort(np.asarray(arrival_t), kind="stable")
    return Outcome(
        arrival=np.asarray(arrival_t)[order],
        status=np.asarray(status)[order],
        latency=np.asarray(latency)[order],
        series=series,
    )


def _hpa_sync(
    policy: HpaPolicy,
    scenario: Scenario,
    pods: dict[int, Pod],
    now: float,
    history: list[tuple[float, int]],
    recommendations: deque[tuple[float, int]],
) -> int:
    """One HPA controller sync: the replicas the Deployment should have now."""
    live = [p for p in pods.values() if p.removed_at is None]
    current = len(live)
    proposals = []
    for name, target in policy.targets.items():
        usages: dict[int, float] = {}
        for pod in live:
            if len(pod.scrapes) < 2:  # rate() needs two samples; a fresh pod has no value yet
                continue
            (t0, a0, _), (t1, a1, _) = pod.scrapes[0], pod.scrapes[-1]
            if name == "deltagate_classify_requests_per_second":
                usages[pod.id] = (a1 - a0) / (t1 - t0)
            elif name == "deltagate_queue_depth_images":
                usages[pod.id] = float(np.mean([q for _, _, q in pod.scrapes]))
            else:
                raise ValueError(f"the simulation does not know metric {name!r}")
        proposals.append(metric_replicas(current, usages, current - len(usages), target, policy.tolerance))
    recommendation = max(proposals) if proposals else current
    recommendations.append((now, recommendation))
    keep = max(policy.up_window_s, policy.down_window_s)
    while recommendations and now - recommendations[0][0] > keep:
        recommendations.popleft()
    up = min([r for t, r in recommendations if now - t <= policy.up_window_s] or [recommendation])
    down = max(r for t, r in recommendations if now - t <= policy.down_window_s)
    stabilized = up if current < up else down if current > down else current
    return rate_limited(policy, current, stabilized, history, now)


# --- summary ------------------------------------------------------------------------------------
def summarize(outcome: Outcome, scenario: Scenario, slo_p99_s: float, window_s: float = 30.0) -> dict[str, Any]:
    """Headline numbers of a run.

    ``time_to_recover_s``: from the start of the ramp to the end of the last ``window_s`` window
    (by arrival time) whose p99 exceeds ``slo_p99_s`` or that has a 503/504/drop; 0 if none.
    """
    n = len(outcome.status)
    ok = outcome.status == 200
    surge = outcome.arrival >= scenario.ramp_start_s
    hold_end = scenario.ramp_start_s + scenario.ramp_s + scenario.hold_s
    in_surge = surge & (outcome.arrival < hold_end)
    late_peak = (outcome.arrival >= max(hold_end - 600.0, scenario.ramp_start_s + scenario.ramp_s)) & in_surge
    lat_ok = outcome.latency[ok]
    bad_end = 0.0
    edges = np.arange(0.0, scenario.duration_s + window_s, window_s)
    for lo, hi in itertools.pairwise(edges):
        sel = (outcome.arrival >= lo) & (outcome.arrival < hi)
        if not sel.any():
            continue
        sel_ok = sel & ok
        p99 = float(np.percentile(outcome.latency[sel_ok], 99)) if sel_ok.any() else math.inf
        if hi > scenario.ramp_start_s and (p99 > slo_p99_s or (outcome.status[sel] != 200).any()):
            bad_end = hi
    return {
        "requests": int(n),
        "share_503": float(np.mean(outcome.status == 503)) if n else 0.0,
        "share_504": float(np.mean(outcome.status == 504)) if n else 0.0,
        "dropped_on_scale_down": int(np.sum(outcome.status == 0)),
        "p50_s": float(np.percentile(lat_ok, 50)) if lat_ok.size else math.nan,
        "p99_s": float(np.percentile(lat_ok, 99)) if lat_ok.size else math.nan,
        "surge_share_503": float(np.mean(outcome.status[in_surge] == 503)) if in_surge.any() else 0.0,
        "surge_p99_s": float(np.percentile(outcome.latency[in_surge & ok], 99)) if (in_surge & ok).any() else math.nan,
        "late_peak_p99_s": (  # the last 10 min of the hold: the policy's steady state at 10x
            float(np.percentile(outcome.latency[late_peak & ok], 99)) if (late_peak & ok).any() else math.nan
        ),
        "replicas_end_of_hold": _at(outcome.series, "ready", hold_end),
        "p99_before_ramp_s": (
            float(np.percentile(outcome.latency[ok & ~surge], 99)) if (ok & ~surge).any() else math.nan
        ),
        "queue_total_peak_images": max(outcome.series["queue_total"], default=0.0),
        "queue_per_pod_peak_images": max(outcome.series["queue_max"], default=0.0),
        "replicas_start": outcome.series["ready"][0] if outcome.series["ready"] else 0,
        "replicas_peak": max(outcome.series["ready"], default=0.0),
        "replicas_end": outcome.series["ready"][-1] if outcome.series["ready"] else 0,
        "slo_p99_s": slo_p99_s,
        "time_to_recover_s": max(0.0, bad_end - scenario.ramp_start_s),
    }


def _at(series: dict[str, list[float]], key: str, t: float) -> float:
    """The last sampled value of ``key`` at or before ``t``."""
    times = np.asarray(series["t"])
    idx = int(np.searchsorted(times, t, side="right")) - 1
    return float(series[key][idx]) if idx >= 0 else math.nan


def plot(outcome: Outcome, scenario: Scenario, model: PodModel, slo_p99_s: float, path: Path) -> None:
    """Offered load vs ready capacity, queue depth, and p99 / 503 share per 15 s window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = {k: np.asarray(v) for k, v in outcome.series.items()}
    t_min = s["t"] / 60.0
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    axes[0].plot(t_min, s["offered"], label="offered requests/s")
    axes[0].plot(t_min, s["ready"] * model.capacity_per_s, label="ready pods x capacity/pod")
    ax_r = axes[0].twinx()
    ax_r.step(t_min, s["ready"], where="post", color="grey", alpha=0.5, label="ready pods")
    ax_r.set_ylabel("pods")
    axes[0].set_ylabel("requests/s")
    axes[0].legend(loc="upper right", fontsize=8)
    axes[1].plot(t_min, s["queue_total"], label="images waiting (all pods)")
    axes[1].plot(t_min, s["queue_max"], label="most in one pod")
    axes[1].axhline(model.max_queue_size, ls="--", color="red", lw=0.8, label="max_queue_size (503 beyond)")
    axes[1].set_ylabel("images")
    axes[1].legend(loc="upper right", fontsize=8)
    edges = np.arange(0.0, scenario.duration_s + 15.0, 15.0)
    mids, p99s, share503 = [], [], []
    for lo, hi in itertools.pairwise(edges):
        sel = (outcome.arrival >= lo) & (outcome.arrival < hi)
        ok = sel & (outcome.status == 200)
        mids.append((lo + hi) / 120.0)
        p99s.append(np.percentile(outcome.latency[ok], 99) if ok.any() else np.nan)
        share503.append(np.mean(outcome.status[sel] == 503) if sel.any() else 0.0)
    axes[2].plot(mids, p99s, label="p99 latency of answered requests (s)")
    axes[2].axhline(slo_p99_s, ls="--", color="grey", lw=0.8, label=f"p99 bound {slo_p99_s:g} s")
    axes[2].set_ylabel("seconds")
    ax_s = axes[2].twinx()
    ax_s.plot(mids, share503, color="red", alpha=0.6, label="503 share")
    ax_s.set_ylabel("503 share")
    axes[2].legend(loc="upper left", fontsize=8)
    ax_s.legend(loc="upper right", fontsize=8)
    axes[2].set_xlabel("minutes")
    fig.suptitle(f"{scenario.factor:g}x ramp over {scenario.ramp_s:g} s, pod start {scenario.pod_start_s:g} s")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _rel(path: Path) -> str:
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", type=Path, default=DEFAULT_BENCH, help="deltagate bench service JSON")
    parser.add_argument("--hpa", type=Path, default=HPA_MANIFEST, help="HPA manifest to replay")
    parser.add_argument("--pod-patch", type=Path, default=POD_PATCH,
                        help="Deployment patch whose DELTAGATE_* env sets batch and queue sizes")
    parser.add_argument("--base-rate", type=float, default=None,
                        help="requests/s before the ramp (default: half the capacity of minReplicas pods)")
    parser.add_argument("--factor", type=float, default=10.0)
    parser.add_argument("--ramp-s", type=float, default=60.0)
    parser.add_argument("--hold-s", type=float, default=900.0)
    parser.add_argument("--pull-s", type=float, default=20.0,
                        help="scheduling + image pull before the process starts (an assumption: not measured here)")
    parser.add_argument("--startup-s", type=float, default=None,
                        help="process start to ready (default: the bench JSON's server_startup_s)")
    parser.add_argument("--window-s", type=float, default=60.0,
                        help="the adapter's rate / avg_over_time window (values.yaml: 1m)")
    parser.add_argument("--max-queue-size", type=int, default=None,
                        help="override the pod's DELTAGATE_MAX_QUEUE_SIZE (default: the overlay's)")
    parser.add_argument("--sweep-pod-start", type=str, default="",
                        help="comma-separated pod start times (s) for a sensitivity table")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON")
    parser.add_argument("--plot", type=Path, default=None, help="write the PNG")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    bench = load_bench(args.bench)
    model = apply_pod_env(pod_model(bench), args.pod_patch)
    if args.max_queue_size is not None:
        model = replace(model, max_queue_size=args.max_queue_size)
    policy = load_hpa_policy(args.hpa)
    startup = model.startup_s if args.startup_s is None else args.startup_s
    # + 2 s: the startupProbe's period (deploy/k8s/base/deployment.yaml), the most it adds
    pod_start = args.pull_s + startup + 2.0
    base = args.base_rate if args.base_rate is not None else 0.5 * policy.min_replicas * model.capacity_per_s
    scenario = Scenario(base_rate=base, factor=args.factor, ramp_s=args.ramp_s, hold_s=args.hold_s,
                        pod_start_s=pod_start, window_s=args.window_s, seed=args.seed)
    slo = p99_bound_s(bench)
    outcome = simulate(model, policy, scenario)
    summary = summarize(outcome, scenario, slo)
    sweep = []
    for value in filter(None, args.sweep_pod_start.split(",")):
        run = replace(scenario, pod_start_s=float(value))
        sweep.append({"pod_start_s": float(value), **summarize(simulate(model, policy, run), run, slo)})
    result = {
        "command": "python -m deploy.capacity.simulate " + " ".join(sys.argv[1:] if argv is None else argv),
        "bench": _rel(args.bench), "hpa": _rel(args.hpa), "pod_patch": _rel(args.pod_patch),
        "pod_model": {**asdict(model), "capacity_per_s": model.capacity_per_s},
        "policy": asdict(policy), "scenario": asdict(scenario), "summary": summary, "sweep": sweep,
    }
    logger.info("%s", json.dumps({"summary": summary, "sweep": sweep}, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        logger.info("wrote %s", args.out)
    if args.plot:
        plot(outcome, scenario, model, slo, args.plot)
        logger.info("wrote %s", args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

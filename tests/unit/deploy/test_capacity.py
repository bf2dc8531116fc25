"""The capacity simulation against answers known without it, and against the manifests."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from deploy.capacity.bench import PodModel, hpa_targets, load_bench, pod_model
from deploy.capacity.simulate import (
    HpaPolicy,
    ScalePolicy,
    Scenario,
    apply_pod_env,
    load_hpa_policy,
    main,
    metric_replicas,
    rate_limited,
    simulate,
    summarize,
)

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]

FIXED = HpaPolicy(min_replicas=1, max_replicas=1, targets={})


def one_pod(**changes: float) -> PodModel:
    fields = {"fixed_s": 0.0, "per_image_s": 1.0, "overhead_s": 0.0, "max_batch_size": 1, "max_queue_size": 10**9,
              "request_timeout_s": 1e9, "startup_s": 0.0}
    fields.update(changes)
    return PodModel(**fields)  # type: ignore[arg-type]


def steady(rate: float, seconds: float, seed: int = 0) -> Scenario:
    return Scenario(base_rate=rate, factor=1.0, steady_s=seconds, ramp_s=0.0, hold_s=0.0, tail_s=0.0,
                    initial_replicas=1, seed=seed)


def test_md1_mean_wait_matches_pollaczek_khinchine() -> None:
    """Batch size 1, constant service s, Poisson arrivals: W_q = rho * s / (2 (1 - rho))."""
    s, lam = 1.0, 0.5
    outcome = simulate(one_pod(per_image_s=s), FIXED, steady(lam, 40_000.0), autoscale=False)
    assert set(outcome.status.tolist()) == {200}
    rho = lam * s
    expected = rho * s / (2 * (1 - rho))  # 0.5 s
    waited = float(np.mean(outcome.latency - s))
    # 3 standard errors over seeds 0-4 of this run length is about 7 %
    assert waited == pytest.approx(expected, rel=0.08)
    assert len(outcome.status) == pytest.approx(lam * 40_000.0, rel=0.03)  # Poisson count: 20000 +- 141


def test_overloaded_pod_serves_full_batches_and_refuses_the_rest() -> None:
    """At twice the capacity, answers/s = max_batch_size / forward(max_batch_size); 503 = 1 - mu/lambda."""
    model = one_pod(fixed_s=0.1, per_image_s=0.2, max_batch_size=8, max_queue_size=64)
    lam, seconds = 2 * model.capacity_per_s, 5_000.0
    outcome = simulate(model, FIXED, steady(lam, seconds), autoscale=False)
    served = float(np.sum(outcome.status == 200)) / seconds
    assert served == pytest.approx(model.capacity_per_s, rel=0.02)
    assert float(np.mean(outcome.status == 503)) == pytest.approx(1 - model.capacity_per_s / lam, abs=0.02)


def test_every_request_gets_exactly_one_outcome() -> None:
    """Conservation: arrivals = 200 + 503 + 504 + dropped, and latencies exist exactly for answers."""
    model = one_pod(fixed_s=0.1, per_image_s=0.2, max_batch_size=8, max_queue_size=16, request_timeout_s=2.0)
    outcome = simulate(model, FIXED, steady(2 * model.capacity_per_s, 2_000.0), autoscale=False)
    codes = set(outcome.status.tolist())
    assert codes <= {0, 200, 503, 504} and {200, 503} <= codes
    answered = np.isin(outcome.status, (200, 504))
    assert np.all(np.isfinite(outcome.latency[answered])) and np.all(np.isnan(outcome.latency[outcome.status == 503]))
    assert np.all(np.diff(outcome.arrival) >= 0)


# --- the HPA replica calculator: cases worked out by hand from the controller's algorithm ---------
def test_replica_calculator_scales_by_the_usage_ratio() -> None:
    assert metric_replicas(2, {0: 6.44, 1: 6.44}, 0, 3.22, 0.1) == 4  # ratio 2 -> ceil(2 * 2)
    assert metric_replicas(2, {0: 3.38, 1: 3.38}, 0, 3.22, 0.1) == 2  # ratio 1.05: within tolerance
    assert metric_replicas(4, {0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0}, 0, 3.22, 0.1) == 2  # ceil(0.31 * 4)


def test_replica_calculator_counts_starting_pods_as_idle_when_scaling_up() -> None:
    # 2 reporting pods at 2x target, 2 starting: (2 * 6.44 + 0) / 4 pods = target -> hold at 4
    assert metric_replicas(4, {0: 6.44, 1: 6.44}, 2, 3.22, 0.1) == 4
    # at 4x target: (2 * 12.88) / 4 = 2x -> ceil(2 * 4) = 8
    assert metric_replicas(4, {0: 12.88, 1: 12.88}, 2, 3.22, 0.1) == 8


def test_scale_up_rate_limit_takes_the_larger_policy() -> None:
    policy = HpaPolicy(min_replicas=2, max_replicas=20, targets={},
                       up_policies=(ScalePolicy("Percent", 100, 15.0), ScalePolicy("Pods", 4, 15.0)))
    assert rate_limited(policy, 2, 30, [], 100.0) == 6  # max(2 + 4, 2 * 2)
    assert rate_limited(policy, 10, 30, [], 100.0) == 20  # max(14, 20), capped at maxReplicas
    assert rate_limited(policy, 6, 30, [(95.0, 4)], 100.0) == 6  # +4 within the period: start was 2


# --- the simulation replays the shipped manifests ----------------------------------------------
def test_policy_is_read_from_the_shipped_hpa_and_matches_the_bench_targets() -> None:
    policy = load_hpa_policy()
    assert policy.targets == pytest.approx(hpa_targets(load_bench()))
    assert policy.up_policies and policy.down_window_s == 300.0
    model = apply_pod_env(pod_model(load_bench()))
    assert model.max_queue_size == 64 and model.max_batch_size == 8  # overlays/cpu/deployment-patch.yaml


def test_pod_model_reproduces_the_measured_saturation_throughput() -> None:
    bench = load_bench()
    model = pod_model(bench)
    measured = [r["requests_per_s"] for r in bench["service"] if r["concurrency"] == 16]
    assert min(measured) * 0.95 <= model.capacity_per_s <= max(measured) * 1.05


def test_ten_x_ramp_scales_out_recovers_and_scales_back() -> None:
    bench = load_bench()
    model = apply_pod_env(pod_model(bench))
    policy = load_hpa_policy()
    scenario = Scenario(base_rate=model.capacity_per_s, factor=10.0, hold_s=600.0, tail_s=600.0, pod_start_s=30.0)
    summary = summarize(simulate(model, policy, scenario), scenario, slo_p99_s=5.0)
    needed = math.ceil(10 * model.capacity_per_s / model.capacity_per_s)
    assert summary["replicas_start"] == policy.min_replicas
    assert summary["replicas_peak"] >= needed
    assert summary["replicas_end"] == policy.min_replicas
    assert 0 < summary["time_to_recover_s"] < 600.0
    assert summary["share_504"] == 0.0 and summary["dropped_on_scale_down"] == 0


def test_committed_capacity_numbers_are_what_the_command_produces(tmp_path: Path) -> None:
    """docs/capacity.md quotes results/capacity/ramp.json; re-running its scenario reproduces it."""
    committed = json.loads((ROOT / "results/capacity/ramp.json").read_text(encoding="utf-8"))
    out = tmp_path / "ramp.json"
    assert main(["--out", str(out)]) == 0  # the default scenario, without the sweep
    assert json.loads(out.read_text())["summary"] == pytest.approx(committed["summary"])

"""GPU bench pieces that need no GPU: the NVML sampler's summary, the verdict, the prepared script's syntax."""

from __future__ import annotations

import itertools
import subprocess
import time
from pathlib import Path

import pytest

from deltagate.bench.gpu import GPU_TARGETS, GpuSampler, Plan, verdict

pytestmark = pytest.mark.unit

SCRIPT = Path(__file__).parents[4] / "deltagate" / "bench" / "gpu_run.sh"


def test_sampler_summarises_what_it_read() -> None:
    readings = itertools.cycle([(20.0, 5.0), (80.0, 15.0)])
    with GpuSampler(period_s=0.001, read=lambda: next(readings)) as sampler:
        deadline = time.monotonic() + 5.0
        while len(sampler.samples) < 4 and time.monotonic() < deadline:
            time.sleep(0.005)
    summary = sampler.summary()
    n = summary["samples"]
    assert n >= 4 and summary["gpu_util_max"] == 80.0
    expected = sum(g for g, _ in sampler.samples) / n  # independent mean of what was read
    assert summary["gpu_util_mean"] == pytest.approx(expected, abs=0.05)


def test_sampler_without_nvml_says_so() -> None:
    sampler = GpuSampler(read=None)
    sampler.read = None  # as on a machine without nvidia-ml-py or a driver
    with sampler:
        pass
    assert sampler.summary() == {"nvml": "unavailable"}


def phase(*rows: tuple[int, float, float]) -> dict[str, object]:
    return {"rows": [{"concurrency": c, "ratio": r, "p50_overhead_ms": o} for c, r, o in rows]}


def test_verdict_takes_saturation_for_ratios_and_concurrency_1_for_latency() -> None:
    v = verdict(phase((1, 0.1, 2.5), (128, 0.9, 40.0)), phase((32, 0.55, 90.0)))
    assert (v["ratio_small"], v["ratio_photo"], v["c1_p50_overhead_ms"]) == (0.9, 0.55, 2.5)
    assert v["met"] == {"ratio_small": 0.9 >= GPU_TARGETS["min_ratio_small"], "ratio_photo": False,
                        "c1_overhead": True}
    missing = verdict(None, None)
    assert missing["met"] == {"ratio_small": None, "ratio_photo": None, "c1_overhead": None}


def test_the_dry_run_plan_is_tiny_and_on_the_cpu() -> None:
    dry, real = Plan.dry_run(), Plan()
    assert dry.device == "cpu" and max(dry.sweep_sizes) <= 4 and real.sweep_sizes[-1] == 256
    assert real.device == "cuda" and real.photo_size == (4000, 3000)  # 12 MP


def test_prepared_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.parametrize("installed", [False, True])
def test_without_nvidia_ml_py_or_a_driver_utilisation_is_unavailable(monkeypatch: pytest.MonkeyPatch,
                                                                     installed: bool) -> None:
    """nvidia-ml-py (the gpu extra) is optional: absent, or present without a driver, the report says so."""
    import sys
    import types

    from deltagate.bench import gpu

    if installed:  # the package is there but NVML cannot start (no driver): nvmlInit raises NVMLError
        fake = types.ModuleType("pynvml")

        def no_driver() -> None:
            raise RuntimeError("NVML Shared Library Not Found")

        fake.nvmlInit = no_driver  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "pynvml", fake)
    else:
        monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    assert gpu._nvml() is None
    with GpuSampler() as sampler:
        pass
    assert sampler.summary() == {"nvml": "unavailable"}
    assert "driver" not in gpu.gpu_info()

"""The GPU benchmark: raw engine images/s by batch size, the service under load, GPU utilisation (NVML).

One run on a lent GPU answers the issue's "measure on a lent GPU" list (docs/gpu.md):

- a random-weight ViT-B/16 bundle (:func:`deltagate.bench.bundle.make_bench_bundle`; weights only, no ONNX,
  unless ONNX Runtime has its CUDA provider: the GPU machine has no onnxruntime-gpu, and the ONNX export of a
  ViT-B/16 takes minutes of CPU);
- float16 on CUDA vs float32 on the CPU: label agreement and max |ΔEnergy| difference (:func:`fp16_parity`);
- raw engine images/s at batch 1...256, eager and with CUDA graphs (:func:`engine_sweep`), and the onnx-fp16
  engine (the float16 ONNX graph) where ONNX Runtime has its CUDA provider (:func:`onnx_fp16_phase`; otherwise
  the report says why it was skipped);
- the service at saturation and at concurrency 1 for a small JPEG and a 12 MP JPEG (decoded on the GPU),
  each compared with the raw engine measured just before and after it in the same run
  (:func:`service_phase`), against :data:`GPU_TARGETS`;
- GPU utilisation sampled through NVML during every measured window (:class:`GpuSampler`).

``python -m deltagate.bench.gpu --dry-run`` runs every phase on the CPU with the default bundle and
tiny sizes (what CI and a session without a GPU can check); ``deltagate/bench/gpu_run.sh`` is the
prepared script for the device machine.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import io
import logging
import multiprocessing
import shutil
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from deltagate.bench.engine import load_engine, measure_engine
from deltagate.bench.http import batch_counters, run_load, synthetic_png
from deltagate.bench.report import machine_info
from deltagate.bench.runs import write_report
from deltagate.server_process import deltagate_server
from models.bundle import ONNX_FILE, load_bundle
from service.runtime import LoadedModel
from service.settings import Settings

__all__ = ["GPU_TARGETS", "GpuSampler", "gpu_info", "fp16_parity", "engine_sweep", "onnx_cuda_missing",
           "onnx_fp16_phase", "service_phase", "verdict", "gpu_report", "main"]

logger = logging.getLogger(__name__)

# The targets for a GPU (issue 10, "Measure on a lent GPU"):
GPU_TARGETS = {
    "min_ratio_small": 0.85,  # service images/s at saturation >= 0.85 x raw engine at the same batch, small JPEG
    "min_ratio_photo": 0.6,  # the same for 12 MP JPEGs decoded on the GPU
    "max_c1_overhead_ms": 3.0,  # concurrency 1: service p50 <= raw batch-1 forward p50 + 3 ms
}
SWEEP_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
ONNX_CUDA_EP = "CUDAExecutionProvider"
DEFAULT_BUNDLE = Path("bundles/default")  # committed, so it travels to the device machine


# --- machine and utilisation ------------------------------------------------------------------------
def _nvml() -> Any | None:
    """The NVML bindings (nvidia-ml-py's ``pynvml``), initialised, or None without them or a driver."""
    try:
        nvml = importlib.import_module("pynvml")
        nvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no package, no driver, no GPU: utilisation is simply not reported
        return None
    return nvml


def gpu_info() -> dict[str, Any]:
    """The machine's GPU as torch and NVML see it (name, memory, capability, driver, CUDA), or why not."""
    info: dict[str, Any] = {"torch": torch.__version__, "torch_cuda": torch.version.cuda,
                            "cuda_available": torch.cuda.is_available()}
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:  # pragma: no cover - a core dependency
        pass
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(name=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count)
    nvml = _nvml()
    if nvml is not None:
        info["driver"] = str(nvml.nvmlSystemGetDriverVersion())
    return info


@dataclass
class GpuSampler:
    """Samples GPU utilisation (% of time a kernel ran, NVML's own sampling window) while in use.

    Args:
        period_s: time between samples.
        read: returns (gpu %, memory-controller %); default NVML device 0. None where NVML is absent.
    """

    period_s: float = 0.05
    read: Callable[[], tuple[float, float]] | None = None
    samples: list[tuple[float, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        if self.read is None:
            nvml = _nvml()
            if nvml is not None:
                handle = nvml.nvmlDeviceGetHandleByIndex(0)

                def read() -> tuple[float, float]:
                    rates = nvml.nvmlDeviceGetUtilizationRates(handle)
                    return float(rates.gpu), float(rates.memory)

                self.read = read

    def __enter__(self) -> GpuSampler:
        if self.read is not None:
            self._thread = threading.Thread(target=self._run, name="gpu-sampler", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        assert self.read is not None
        while not self._stop.is_set():
            self.samples.append(self.read())
            self._stop.wait(self.period_s)

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def summary(self) -> dict[str, Any]:
        """Mean and max GPU %, mean memory %, sample count; ``{"nvml": "unavailable"}`` without NVML."""
        if self.read is None:
            return {"nvml": "unavailable"}
        if not self.samples:
            return {"samples": 0}
        gpu, mem = zip(*self.samples, strict=True)
        return {"gpu_util_mean": round(statistics.fmean(gpu), 1), "gpu_util_max": max(gpu),
                "mem_util_mean": round(statistics.fmean(mem), 1), "samples": len(gpu)}


# --- model ------------------------------------------------------------------------------------------
def fp16_parity(bundle: Path, device: str, n: int = 64) -> dict[str, Any]:
    """The torch engine on ``device`` (float16 on CUDA) against float32 on the CPU, on ``n`` drawings."""
    from models.preprocess import preprocess_batch
    from models.train.export import parity_images

    ref, dev = load_engine(bundle, "torch", "cpu"), load_engine(bundle, "torch", device)  # type: ignore[arg-type]
    pixels = preprocess_batch(parity_images(n, seed=0), ref.manifest.preprocess)  # (n, 3, H, W)
    a, b = ref.infer(pixels), dev.infer(pixels)
    diff = np.abs(a["delta_energy"].astype(np.float64) - b["delta_energy"])  # (n,)
    result = {"images": n, "reference": "torch float32 cpu", "tested": f"torch {dev.engine.precision} "
              f"{dev.engine.device}", "label_agreement": float(np.mean(a["probs"].argmax(1) == b["probs"].argmax(1))),
              "max_abs_delta_energy_diff": float(diff.max()), "median_abs_delta_energy_diff": float(np.median(diff))}
    ref.engine.close()
    dev.engine.close()
    return result


# --- raw engine -------------------------------------------------------------------------------------
def onnx_cuda_missing() -> str | None:
    """Why the onnx-fp16 engine cannot run on CUDA here, or None when ONNX Runtime has its CUDA provider."""
    try:
        import onnxruntime as ort
    except ImportError:
        return "onnxruntime is not installed"
    available = ort.get_available_providers()
    if ONNX_CUDA_EP in available:
        return None
    return (f"onnxruntime {ort.__version__} has no {ONNX_CUDA_EP} (available: {', '.join(available)}): "
            "the float16 ONNX graph needs onnxruntime-gpu")


def _fp16_blocker(device: str, bundle: Path | None) -> str | None:
    """Why the onnx-fp16 phase cannot run on ``device`` with ``bundle`` (None: a bundle still to be built), or None.

    Beside the CUDA provider, a bundle without a float16 graph needs model.onnx and the packages that export
    and convert it (the GPU machine has neither onnx nor onnxscript).
    """
    if device == "cuda" and (missing := onnx_cuda_missing()) is not None:
        return missing
    manifest = load_bundle(bundle, verify=False).manifest if bundle is not None else None
    if manifest is not None and manifest.fp16 is not None:
        return None
    if manifest is not None and ONNX_FILE not in manifest.files:
        return f"{bundle} has no model.onnx to convert"
    absent = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    return f"the float16 graph needs {' and '.join(absent)}, not installed here" if absent else None


def _with_fp16_graph(bundle: Path, work: Path) -> Path:
    """``bundle`` if it has a float16 graph, else a copy of it with one."""
    if load_bundle(bundle, verify=False).manifest.fp16 is not None:
        return bundle
    from models.train.float16 import float16_bundle

    copy = work / "fp16-bundle"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(bundle, copy)
    float16_bundle(copy)  # parity record on 64 drawings
    return copy


def onnx_fp16_phase(bundle: Path, plan: Plan, image: bytes, work: Path) -> dict[str, Any]:
    """Raw onnx-fp16 engine images/s by batch size on ``plan.device``, or ``{"skipped": why}``.

    On CUDA it needs ONNX Runtime's CUDA provider; the CPU dry run converts and runs it on the CPU, to check
    that the phase works.
    """
    reason = _fp16_blocker(plan.device, bundle)
    if reason is not None:
        logger.warning("engine onnx-fp16 skipped: %s", reason)
        return {"skipped": reason}
    fp16 = _with_fp16_graph(bundle, work)
    model = load_engine(fp16, "onnx-fp16", plan.device)  # type: ignore[arg-type]
    try:
        facts = model.engine.describe()
        manifest_fp16 = model.manifest.fp16
        parity = manifest_fp16.parity.model_dump(mode="json") if manifest_fp16 is not None else None
        return {"bundle": str(fp16), "engine": facts, "parity": parity,
                "rows": engine_sweep(model, image, plan.sweep_sizes, plan.sweep_seconds)}
    finally:
        model.engine.close()


def _graphs(model: LoadedModel, sizes: Sequence[int]) -> bool:
    """Turn on CUDA graphs for ``sizes`` where the engine supports them (torch on CUDA); whether it did."""
    enable = getattr(model.engine, "enable_cuda_graphs", None)
    return bool(enable(list(sizes))) if enable is not None else False


def engine_sweep(model: LoadedModel, image: bytes, sizes: Sequence[int], seconds: float) -> list[dict[str, Any]]:
    """Images/s and per-forward latency at each batch size, with the GPU utilisation of each window."""
    rows = []
    for b in sizes:
        with GpuSampler() as sampler:
            row = measure_engine(model, image, b, seconds).as_row()
        rows.append({**row, **sampler.summary()})
    return rows


# --- service ----------------------------------------------------------------------------------------
def _load_worker(args: tuple[str, bytes, int, float, float, float]) -> dict[str, Any]:
    url, image, concurrency, seconds, warmup_s, timeout_s = args
    result = run_load(url, image, concurrency, seconds, warmup_s, timeout_s)
    return {"requests_per_s": result.requests_per_s, "errors": result.errors, "p50_ms": result.latency.p50_ms,
            "p99_ms": result.latency.p99_ms, "status_counts": result.status_counts}


def _drive(url: str, image: bytes, concurrency: int, seconds: float, warmup_s: float, clients: int) -> dict[str, Any]:
    """Closed-loop load from ``clients`` processes (one Python client process tops out near 1-2k req/s)."""
    clients = max(1, min(clients, concurrency))
    shares = [concurrency // clients + (i < concurrency % clients) for i in range(clients)]
    jobs = [(url, image, c, seconds, warmup_s, 60.0) for c in shares]
    if clients == 1:
        parts = [_load_worker(jobs[0])]
    else:
        with multiprocessing.get_context("spawn").Pool(clients) as pool:
            parts = pool.map(_load_worker, jobs)
    return {"concurrency": concurrency, "client_processes": clients,
            "requests_per_s": round(sum(p["requests_per_s"] for p in parts), 2),
            "errors": sum(p["errors"] for p in parts), "p50_ms": max(p["p50_ms"] for p in parts),
            "p99_ms": max(p["p99_ms"] for p in parts)}


def service_phase(settings: Settings, raw: LoadedModel, image: bytes, concurrency: Sequence[int], seconds: float,
                  engine_seconds: float, clients: int, warmup_s: float = 2.0,
                  ports: tuple[int, int] | None = None) -> dict[str, Any]:
    """The real server under closed-loop load, each level between two raw-engine passes (batch 1 and max).

    Returns:
        Server start-up time, one row per level (images/s, p50, GPU utilisation, server-side mean batch,
        ratio to the raw engine at ``max_batch_size``, p50 overhead over the raw batch-1 forward).
    """
    sizes = sorted({1, settings.max_batch_size})
    with deltagate_server(settings, port_range=ports) as server:
        passes = [{b: measure_engine(raw, image, b, engine_seconds) for b in sizes}]
        rows = []
        for c in concurrency:
            before = batch_counters(server.url)
            with GpuSampler() as sampler:
                row = _drive(server.url, image, c, seconds, warmup_s, clients)
            after = batch_counters(server.url)
            forwards = after["forwards"] - before["forwards"]
            row["mean_batch_size"] = round((after["images"] - before["images"]) / forwards, 2) if forwards else None
            passes.append({b: measure_engine(raw, image, b, engine_seconds) for b in sizes})
            raw_max = statistics.fmean(p[settings.max_batch_size].images_per_s for p in passes[-2:])
            raw_b1 = statistics.fmean(p[1].latency.p50_ms for p in passes[-2:])
            rows.append({**row, **sampler.summary(), "raw_images_per_s_at_max_batch": round(raw_max, 2),
                         "ratio": round(row["requests_per_s"] / raw_max, 3), "raw_batch1_p50_ms": round(raw_b1, 2),
                         "p50_overhead_ms": round(row["p50_ms"] - raw_b1, 2)})
        startup = server.startup_seconds
    return {"server_startup_s": startup, "image_bytes": len(image), "rows": rows}


def verdict(small: dict[str, Any] | None, photo: dict[str, Any] | None) -> dict[str, Any]:
    """The issue's three targets from the service phases (None where a phase did not run)."""

    def top(phase: dict[str, Any] | None) -> dict[str, Any] | None:
        return max(phase["rows"], key=lambda r: r["concurrency"]) if phase and phase["rows"] else None

    def c1(phase: dict[str, Any] | None) -> dict[str, Any] | None:
        return next((r for r in phase["rows"] if r["concurrency"] == 1), None) if phase else None

    s, p, one = top(small), top(photo), c1(small)
    return {
        "targets": GPU_TARGETS,
        "ratio_small": s and s["ratio"], "ratio_photo": p and p["ratio"],
        "c1_p50_overhead_ms": one and one["p50_overhead_ms"],
        "met": {"ratio_small": s and s["ratio"] >= GPU_TARGETS["min_ratio_small"],
                "ratio_photo": p and p["ratio"] >= GPU_TARGETS["min_ratio_photo"],
                "c1_overhead": one and one["p50_overhead_ms"] <= GPU_TARGETS["max_c1_overhead_ms"]},
    }


# --- the whole run ----------------------------------------------------------------------------------
def jpeg(width: int, height: int, quality: int = 90) -> bytes:
    """The photo-like bench image (:func:`deltagate.bench.http.synthetic_png`) as a JPEG."""
    buf = io.BytesIO()
    Image.open(io.BytesIO(synthetic_png(width, height))).convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


@dataclass(frozen=True)
class Plan:
    """Sizes of one run: the GPU run's defaults, or tiny ones for the CPU dry run."""

    device: str = "cuda"
    model: str = "ViT-B-16"
    sweep_sizes: tuple[int, ...] = SWEEP_SIZES
    sweep_seconds: float = 2.0
    max_batch_size: int = 64
    concurrency: tuple[int, ...] = (1, 128)
    photo_concurrency: tuple[int, ...] = (32,)
    level_seconds: float = 8.0
    engine_seconds: float = 1.5
    clients: int = 4  # client processes at saturation
    photo_size: tuple[int, int] = (4000, 3000)  # 12 MP
    parity_images: int = 16
    budget_s: float = 480.0  # phases that would start past this are skipped (and say so)
    device_decode: str = "auto"  # the service's DELTAGATE_DEVICE_DECODE (auto = on for torch on CUDA)
    ports: tuple[int, int] | None = None  # the server's port range (None: the OS picks; the GPU machine is bare)

    @classmethod
    def dry_run(cls) -> Plan:
        return cls(device="cpu", model="", sweep_sizes=(1, 4), sweep_seconds=0.2, max_batch_size=4,
                   concurrency=(1, 4), photo_concurrency=(2,), level_seconds=0.6, engine_seconds=0.2, clients=2,
                   photo_size=(640, 480), parity_images=4, budget_s=600.0, device_decode="on",
                   ports=(18600, 18699))


def gpu_report(out: Path, plan: Plan, bundle: Path | None = None, work: Path | None = None) -> dict[str, Any]:
    """Every phase of the GPU run in order, each skipped (and recorded as such) past ``plan.budget_s``.

    Args:
        out: folder for the report (gpu.json) and the built bundle.
        plan: sizes and device.
        bundle: an existing bundle to use instead of building ``plan.model`` with random weights.
        work: where the built bundle goes (default ``out/bundle``; the GPU script keeps it out of $OUT).
    """
    t0 = time.monotonic()
    report: dict[str, Any] = {"benchmark": "gpu", "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
                              "plan": plan.__dict__, "machine": {**machine_info(), "gpu": gpu_info()},
                              "targets": GPU_TARGETS, "skipped": []}

    def due(phase: str) -> bool:
        if time.monotonic() - t0 < plan.budget_s:
            logger.info("phase %s at %.0f s", phase, time.monotonic() - t0)
            return True
        report["skipped"].append(phase)
        return False

    def save() -> None:
        report["wall_seconds"] = round(time.monotonic() - t0, 1)
        write_report(report, out / "gpu.json")

    if bundle is None:
        from deltagate.bench.bundle import make_bench_bundle

        start = time.monotonic()
        onnx = _fp16_blocker(plan.device, None) is None  # the ONNX export only where onnx-fp16 can run
        bundle = make_bench_bundle((work or out) / "bundle", plan.model, onnx=onnx, int8=False, fp16=onnx).path
        report["bundle_build_s"] = round(time.monotonic() - start, 1)
    report["bundle"] = str(bundle)
    small, photo = jpeg(320, 240), jpeg(*plan.photo_size)
    if due("fp16_parity"):
        report["fp16_parity"] = fp16_parity(bundle, plan.device)
        save()
    if due("device_preprocess_parity"):
        from deltagate.bench.device_preprocess import device_preprocess_report

        # the trained default bundle (labels that mean something), scored on the CPU; decode on plan.device
        sizes = (1.0, 12.0) if plan.device == "cuda" else (1.0,)
        report["device_preprocess_parity"] = device_preprocess_report(
            "deltagate.bench.gpu", DEFAULT_BUNDLE, "torch", plan.device, plan.parity_images, sizes, 0, 1)["workloads"]
        save()
    raw = load_engine(bundle, "torch", plan.device)  # type: ignore[arg-type]
    try:
        if due("engine_eager"):
            report["engine_eager"] = engine_sweep(raw, small, plan.sweep_sizes, plan.sweep_seconds)
            save()
        report["cuda_graphs"] = _graphs(raw, plan.sweep_sizes)
        if report["cuda_graphs"] and due("engine_cuda_graphs"):
            report["engine_cuda_graphs"] = engine_sweep(raw, small, plan.sweep_sizes, plan.sweep_seconds)
            save()
        if due("engine_onnx_fp16"):
            report["engine_onnx_fp16"] = onnx_fp16_phase(bundle, plan, small, work or out)
            save()
        base = Settings(bundle_path=bundle, engine="torch", device=plan.device,
                        max_batch_size=plan.max_batch_size, max_queue_size=max(1024, 2 * max(plan.concurrency)),
                        device_decode=plan.device_decode, log_level="warning")
        report["service_settings"] = base.model_dump(mode="json", exclude={"api_key"})
        phases = {"service_small": (small, plan.concurrency), "service_photo": (photo, plan.photo_concurrency)}
        for name, (image, levels) in phases.items():
            if due(name):
                report[name] = service_phase(base, raw, image, levels, plan.level_seconds, plan.engine_seconds,
                                             plan.clients, ports=plan.ports)
                save()
    finally:
        raw.engine.close()
    report["verdict"] = verdict(report.get("service_small"), report.get("service_photo"))
    save()
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m deltagate.bench.gpu --out DIR [--dry-run]``: the whole GPU run, report in DIR/gpu.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu.json and the built bundle")
    parser.add_argument("--dry-run", action="store_true", help="CPU, default bundle, tiny sizes")
    parser.add_argument("--bundle", type=Path, default=None, help="use this bundle instead of building one")
    parser.add_argument("--work", type=Path, default=None, help="folder for the built bundle [OUT]")
    parser.add_argument("--budget-s", type=float, default=None, help="skip phases that would start later")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    plan = Plan.dry_run() if args.dry_run else Plan()
    if args.dry_run:  # checks that every phase runs, not speed: one thread is fastest on a shared CPU
        torch.set_num_threads(1)
    if args.budget_s is not None:
        plan = Plan(**{**plan.__dict__, "budget_s": args.budget_s})
    bundle = args.bundle or (DEFAULT_BUNDLE if args.dry_run else None)
    args.out.mkdir(parents=True, exist_ok=True)
    report = gpu_report(args.out, plan, bundle, args.work)
    logger.info("wrote %s (verdict %s)", args.out / "gpu.json", report["verdict"]["met"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

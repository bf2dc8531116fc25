"""The service's runtime: bundle, engine instances, batcher and decode pool, with their lifecycle.

Compute threads (engines, decode pool) run niced by ``compute_nice`` (:mod:`service.priority`).
Start-up runs in the background so that ``/healthz`` answers at once and ``/readyz`` says 503
until the bundle is loaded into every engine instance and each instance has run one forward per
batch-size bucket (warm-up). Thread counts come from :meth:`Settings.threads` (the CPU budget).
"""

from __future__ import annotations

import asyncio
import enum
import gc
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from models.bundle import MANIFEST_FILE, Bundle, BundleError, BundleManifest, load_bundle
from models.preprocess import ShapeLimits
from models.quality import bundle_checks
from service.batcher import Batcher
from service.engines import Engine, EngineChoice, EngineThreads, check_outputs, choose_engine, create_engine
from service.engines.dummy import dummy_bundle
from service.errors import NotReadyError
from service.metrics import ServiceMetrics
from service.priority import lowered_priority, run_niced
from service.settings import Settings, ThreadPlan

if TYPE_CHECKING:
    from service.device_input import DeviceInput
    from service.label_sets import LabelSets

__all__ = ["Phase", "LoadedModel", "Runtime", "load_models", "check_bundle", "check_device", "log_bundle_checks",
           "shape_limits"]

logger = logging.getLogger(__name__)


class Phase(enum.StrEnum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"
    STOPPING = "stopping"


@dataclass
class LoadedModel:
    bundle: Bundle
    engine: Engine
    choice: EngineChoice | None = None  # which engine serves and why (None: created directly, e.g. by a bench)

    @property
    def manifest(self) -> BundleManifest:
        return self.bundle.manifest

    def infer(self, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
        """The engine's forward with its outputs checked (names, shapes, float32)."""
        outputs = self.engine.infer(pixel_values)
        return check_outputs(outputs, pixel_values.shape[0], len(self.manifest.classes))


def _served_bundle(settings: Settings) -> Bundle:
    """The bundle the settings name (the dummy engine's own when it has none), with a calibrated threshold.

    Raises:
        BundleError: bundle missing, corrupt (a file or its SHA-256) or without a calibrated threshold.
    """
    if settings.engine == "dummy" and not (settings.bundle_path / MANIFEST_FILE).is_file():
        return dummy_bundle(settings.dummy_num_classes)
    bundle = load_bundle(settings.bundle_path)
    if bundle.manifest.calibration is None:
        raise BundleError(f"{bundle.path}: bundle has no calibrated threshold "
                          f"(run `deltagate calibrate --bundle {bundle.path} --data DATA` first)")
    return bundle


def check_bundle(settings: Settings) -> Bundle:
    """Before the server starts, in one pass: the manifest, every file and its SHA-256, the threshold, and
    that the engine can be created for this bundle (its graph, its threshold, its packages). Nothing loads.

    Raises:
        BundleError: what is wrong with the bundle (one line, naming the file).
        EngineError: the engine cannot serve it (no int8 graph, a missing extra, ...).
    """
    bundle = _served_bundle(settings)
    create_engine(settings.engine, bundle, settings.device, EngineThreads(1, 1, False))
    return bundle


def log_bundle_checks(manifest: BundleManifest) -> None:
    """The guard against a useless model (:mod:`models.quality`), from the bundle's own records: a warning
    per failed check, so that a model that learned nothing cannot serve without saying so."""
    for check in bundle_checks(manifest):
        level = logging.INFO if check.ok else logging.WARNING
        logger.log(level, "model check: %s", check.message,
                   extra={"fields": {"check": check.name, "ok": check.ok, "model": manifest.name}})


def load_models(settings: Settings, plan: ThreadPlan) -> list[LoadedModel]:
    """Load the bundle once and one engine instance per ``plan.instances`` (blocking).

    Raises:
        BundleError: bundle missing, corrupt or without a calibrated threshold.
        EngineError: the engine cannot run where asked (e.g. device=cuda and an instance would
            run on the CPU).
    """
    bundle = _served_bundle(settings)
    if (settings.bundle_path / MANIFEST_FILE).is_file():  # a real bundle (the dummy engine's own has no records)
        log_bundle_checks(bundle.manifest)
    threads = EngineThreads(plan.intra_op_threads, settings.inter_op_threads, settings.spin_wait)
    choice = choose_engine(settings.engine, bundle, settings.device)
    logger.info("engine %s (%s): %s", choice.engine, choice.reason, choice.detail,
                extra={"fields": {"engine": choice.engine, **choice.facts(), "detail": choice.detail}})
    models = []
    for i in range(plan.instances):
        engine = create_engine(choice.engine, bundle, settings.device, threads)
        engine.load()
        # engine.bundle, not bundle: an engine may serve a view of it (onnx-int8: the int8 graph's threshold).
        models.append(LoadedModel(engine.bundle, engine, choice))
        logger.info("engine instance loaded", extra={"fields": {
            "instance": i, "bundle": str(bundle.path), "model": bundle.manifest.name,
            "version": bundle.manifest.version, **engine.describe()}})
    return models


def load_label_sets(bundle: Bundle, settings: Settings, plan: ThreadPlan) -> LabelSets | None:
    """The text side of a bundle that has one (label sets, ad-hoc labels); None for fixed classes only."""
    if not bundle.has_text:
        return None
    from service.label_sets import LabelSets

    return LabelSets(bundle, settings, plan.intra_op_threads)


def check_device(settings: Settings) -> None:
    """Before the server starts: with ``device=cuda``, load one engine instance to prove it runs on CUDA.

    ``device=auto``/``cpu`` need no check. The service itself would also refuse (the engines raise
    in ``load``, ``/readyz`` stays "failed"), but ``deltagate serve`` should not start at all.

    Raises:
        EngineError: the engine would run elsewhere (no CUDA, or its CUDA provider failed to initialise).
        BundleError: the bundle cannot be loaded.
    """
    if settings.device != "cuda":
        return
    (model,) = load_models(settings, ThreadPlan(1, 1, 1, 1))
    model.engine.close()


def shape_limits(settings: Settings, manifest: BundleManifest) -> ShapeLimits:
    """The per-image shape limits for this bundle's preprocessing.

    Raises:
        ValueError: ``max_resized_pixels`` is below the model input itself (every image would be refused).
    """
    cfg = manifest.preprocess
    if settings.max_resized_pixels < cfg.image_size**2:
        raise ValueError(f"max_resized_pixels ({settings.max_resized_pixels}) is below the model input of "
                         f"{cfg.image_size}x{cfg.image_size} pixels: every image would be refused")
    return ShapeLimits(cfg, settings.max_aspect_ratio, settings.max_resized_pixels)


def enable_cuda_graphs(model: LoadedModel, settings: Settings) -> bool:
    """Capture the torch engine's CUDA graphs per batch-size bucket where it runs on CUDA (before warm-up)."""
    enable = getattr(model.engine, "enable_cuda_graphs", None)
    return bool(settings.cuda_graphs and enable is not None and enable(settings.batch_buckets()))


def device_path(
    model: LoadedModel, settings: Settings, shape: ShapeLimits | None = None
) -> tuple[DeviceInput | None, Any]:
    """The device input path and the batcher's stack function for the torch engine (None, None: NumPy path).

    torch is imported only for the torch engine, so the ONNX-only image never needs it.
    """
    engine = model.engine
    if engine.name != "torch":
        return None, None
    from service.device_input import batch_stacker, device_input_for

    device_input = device_input_for(settings.device_decode, engine.name, engine.device, model.manifest.preprocess,
                                    settings.max_image_pixels, settings.fast_decode, shape)
    on_cuda = engine.device.startswith("cuda")
    return device_input, batch_stacker(engine.device) if device_input is not None or on_cuda else None


def warm_up(model: LoadedModel, buckets: list[int]) -> None:
    """One forward at each batch-size bucket, so the first requests meet no cold paths."""
    size = model.manifest.preprocess.image_size
    for b in buckets:
        start = time.perf_counter()
        model.infer(np.zeros((b, 3, size, size), dtype=np.float32))  # (b, 3, H, W)
        logger.debug("warm-up forward", extra={"fields": {"batch_size": b, "seconds": time.perf_counter() - start}})


def freeze_heap() -> None:
    """Collect, then move every object still alive into the permanent generation (``gc.freeze``).

    The bundle, the engines' Python side, the tokenizer and the imported libraries are a heap of
    objects that live as long as the process; a full (generation 2) collection walks all of them,
    and it runs on whichever thread allocates at the time, often the event loop's: every answer
    waits for it, 503s and health checks included (``deltagate bench overload`` measures it, the
    variant ``nice10-nofreeze``). After the freeze a full collection walks only what was made
    since. Frozen objects are still freed by reference counting; only cycles among them are never
    collected, and the process made them all before serving.
    """
    gc.collect()
    gc.freeze()
    logger.debug("heap frozen", extra={"fields": {"objects": gc.get_freeze_count()}})


class Runtime:
    """Everything a request needs, and its start and stop.

    Args:
        settings: service settings.
        metrics: where to record.
    """

    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.phase = Phase.LOADING
        self.error: str | None = None
        self.plan = settings.threads()
        self.instances: list[LoadedModel] = []
        self.batcher: Batcher | None = None
        self.device_input: DeviceInput | None = None  # JPEG decode + preprocessing on the engine's device
        self.label_sets: LabelSets | None = None  # the text side (bundles that have one): label sets, ad-hoc labels
        self.shape_limits: ShapeLimits | None = None  # per-image aspect-ratio and resized-size limits, once loaded
        # Decode pool: its queue is bounded by admission (at most max_queue_size images in flight).
        self.pool = ThreadPoolExecutor(self.plan.decode_workers, thread_name_prefix="deltagate-pre",
                                       initializer=lowered_priority(settings.compute_nice))
        self._start_task: asyncio.Task[None] | None = None

    def begin_start(self) -> asyncio.Task[None]:
        """Start loading in the background; returns the task (tests may await it)."""
        self._start_task = asyncio.get_running_loop().create_task(self.start(), name="deltagate-start")
        return self._start_task

    async def wait_started(self) -> None:
        """Wait until the background start has finished (ready or failed)."""
        if self._start_task is not None:
            await asyncio.shield(self._start_task)

    @property
    def model(self) -> LoadedModel | None:
        """The first instance (bundle, manifest and engine facts are the same for all)."""
        return self.instances[0] if self.instances else None

    async def start(self) -> None:
        """Load, warm up, start the batcher, then turn ready. Failures are kept, not raised."""
        s, plan = self.settings, self.plan
        if plan.instances * plan.intra_op_threads > plan.budget:
            logger.warning("%d instances x %d intra-op threads exceed the CPU budget of %d",
                           plan.instances, plan.intra_op_threads, plan.budget)
        try:
            # In a niced thread: the engines' own threads (intra-op pools) inherit its priority.
            models, graphs = await run_niced(s.compute_nice, self._load_and_warm_up)
            label_sets = await run_niced(s.compute_nice, load_label_sets, models[0].bundle, s, plan)
            shape = shape_limits(s, models[0].manifest)
        except Exception as exc:
            self.phase, self.error = Phase.FAILED, f"{type(exc).__name__}: {exc}"
            logger.error("model load failed; the service stays unready", exc_info=True)
            return
        pad = models[0].engine.device.startswith("cuda") if s.pad_to_bucket is None else s.pad_to_bucket
        pad = pad or any(graphs)
        self.shape_limits = shape
        self.device_input, stack = device_path(models[0], s, shape)
        self.batcher = Batcher(
            [m.infer for m in models], s.max_batch_size, s.max_wait_ms / 1000.0, s.max_queue_size,
            pad_buckets=s.batch_buckets() if pad else None,
            on_batch=self.metrics.observe_batch, on_depth=self.metrics.queue_depth.set, stack=stack,
            thread_initializer=lowered_priority(s.compute_nice),
        )
        self.batcher.start()
        self.instances = models
        self.label_sets = label_sets
        facts = self.engine_facts()
        self.metrics.bind_model(models[0].bundle.stored_manifest, facts)  # every graph's bounds: gate_score_buckets
        if s.gc_freeze:
            freeze_heap()
        self.metrics.ready.set(1)
        self.phase = Phase.READY
        logger.info("ready", extra={"fields": {**facts, "max_batch_size": s.max_batch_size,
                                               "max_wait_ms": s.max_wait_ms, "padded_batches": pad,
                                               "device_decode": self.device_decode,
                                               "decode_workers": plan.decode_workers, "cpu_budget": plan.budget}})

    def _load_and_warm_up(self) -> tuple[list[LoadedModel], list[bool]]:
        """Load every instance, capture CUDA graphs where it can, warm up (blocking)."""
        models = load_models(self.settings, self.plan)
        graphs = [enable_cuda_graphs(m, self.settings) for m in models]
        if self.settings.warmup:
            for model in models:
                warm_up(model, self.settings.batch_buckets())
        return models, graphs

    @property
    def device_decode(self) -> str:
        """Where JPEGs are decoded: "cuda:0", "cpu" (device path forced on a CPU engine) or "off" (PIL, CPU)."""
        return str(self.device_input.device) if self.device_input is not None else "off"

    def engine_facts(self) -> dict[str, str]:
        """What really runs, for /model, the log and the model-info metric: the first instance's facts
        and the instance count; a fact on which instances differ lists every instance's value."""
        described = [m.engine.describe() for m in self.instances]
        facts = {key: ";".join(dict.fromkeys(d[key] for d in described)) for key in described[0]}
        choice = self.instances[0].choice
        return {**facts, **(choice.facts() if choice else {}), "instances": str(len(described))}

    async def stop(self) -> None:
        """Finish queued and running work (graceful), then free the engine and threads."""
        self.phase = Phase.STOPPING
        self.metrics.ready.set(0)
        if self._start_task is not None and not self._start_task.done():
            self._start_task.cancel()
        if self.batcher is not None:
            await self.batcher.stop(self.settings.graceful_shutdown_s)  # returns once no forward runs
        for model in self.instances:
            model.engine.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        logger.info("stopped")

    def require_ready(self) -> tuple[LoadedModel, Batcher]:
        """The model (first instance) and batcher, or 503 with ``Retry-After`` while loading or stopping."""
        if self.phase is not Phase.READY or self.model is None or self.batcher is None:
            headers = {"Retry-After": str(self.settings.retry_after_s)}
            raise NotReadyError(f"the model is not ready (state: {self.phase.value})", headers=headers)
        return self.model, self.batcher

    def require_label_sets(self) -> LabelSets:
        """The text side, or 422 when the bundle has none (call after :meth:`require_ready`)."""
        if self.label_sets is None:
            from service.errors import LabelSetsUnavailableError

            raise LabelSetsUnavailableError(
                "this bundle serves its own classes only: it has no text side for label sets (re-export it with "
                "this deltagate version; docs/label-sets.md)")
        return self.label_sets

"""The service's runtime: bundle, engine, batcher and thread pool, with their lifecycle.

Start-up runs in the background so that ``/healthz`` answers at once and ``/readyz`` says 503
until the bundle is loaded and every batch-size bucket has run one forward (warm-up).
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.bundle import MANIFEST_FILE, ArchitectureInfo, Bundle, BundleError, BundleManifest, load_bundle
from models.calibration import CalibrationRecord
from models.preprocess import PreprocessConfig
from service.batcher import Batcher
from service.engines import Engine, check_outputs, create_engine
from service.errors import NotReadyError
from service.settings import Settings
from service.telemetry import ServiceMetrics

__all__ = ["Phase", "LoadedModel", "Runtime", "load_model", "dummy_bundle"]

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

    @property
    def manifest(self) -> BundleManifest:
        return self.bundle.manifest

    def infer(self, pixel_values: np.ndarray) -> dict[str, np.ndarray]:
        """The engine's forward with its outputs checked (names, shapes, float32)."""
        outputs = self.engine.infer(pixel_values)
        return check_outputs(outputs, pixel_values.shape[0], len(self.manifest.classes))


def dummy_bundle(num_classes: int) -> Bundle:
    """An in-memory bundle for the dummy engine: no files, 32 px inputs, a fixed calibration.

    The calibration scores span 2..40, so a uniform image (ΔEnergy ≈ 0.3 under the dummy engine)
    is OOD and an image bright in one strip (ΔEnergy ≈ 40) is in-distribution.
    """
    manifest = BundleManifest(
        name="dummy", version="0", architecture=ArchitectureInfo(model_name="dummy", open_clip_config={}),
        preprocess=PreprocessConfig(image_size=32), classes=[f"class_{i}" for i in range(num_classes)],
        logit_scale=100.0, calibration=CalibrationRecord.from_scores(np.linspace(2.0, 40.0, 201)), files={},
    )
    return Bundle(Path("<dummy>"), manifest)


def load_model(settings: Settings) -> LoadedModel:
    """Load the bundle and its engine (blocking).

    Raises:
        BundleError: bundle missing, corrupt or without a calibrated threshold.
        EngineError: the engine cannot run here (e.g. CUDA asked for but absent).
    """
    if settings.engine == "dummy" and not (settings.bundle_path / MANIFEST_FILE).is_file():
        bundle = dummy_bundle(settings.dummy_num_classes)
    else:
        bundle = load_bundle(settings.bundle_path)
    if bundle.manifest.calibration is None:
        raise BundleError(f"{bundle.path}: bundle has no calibrated threshold (run `deltagate calibrate`)")
    engine = create_engine(settings.engine, bundle, settings.device)
    engine.load()
    logger.info("engine loaded", extra={"fields": {"bundle": str(bundle.path), "model": bundle.manifest.name,
                                                   "version": bundle.manifest.version, **engine.describe()}})
    return LoadedModel(bundle, engine)


def warm_up(model: LoadedModel, buckets: list[int]) -> None:
    """One forward at each batch-size bucket, so the first requests meet no cold paths."""
    size = model.manifest.preprocess.image_size
    for b in buckets:
        start = time.perf_counter()
        model.infer(np.zeros((b, 3, size, size), dtype=np.float32))  # (b, 3, H, W)
        logger.debug("warm-up forward", extra={"fields": {"batch_size": b, "seconds": time.perf_counter() - start}})


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
        self.model: LoadedModel | None = None
        self.batcher: Batcher | None = None
        self.pool = ThreadPoolExecutor(settings.preprocess_workers, thread_name_prefix="deltagate-pre")
        self._start_task: asyncio.Task[None] | None = None

    def begin_start(self) -> asyncio.Task[None]:
        """Start loading in the background; returns the task (tests may await it)."""
        self._start_task = asyncio.get_running_loop().create_task(self.start(), name="deltagate-start")
        return self._start_task

    async def wait_started(self) -> None:
        """Wait until the background start has finished (ready or failed)."""
        if self._start_task is not None:
            await asyncio.shield(self._start_task)

    async def start(self) -> None:
        """Load, warm up, start the batcher, then turn ready. Failures are kept, not raised."""
        s = self.settings
        try:
            model = await asyncio.to_thread(load_model, s)
            if s.warmup:
                await asyncio.to_thread(warm_up, model, s.batch_buckets())
        except Exception as exc:
            self.phase, self.error = Phase.FAILED, f"{type(exc).__name__}: {exc}"
            logger.error("model load failed; the service stays unready", exc_info=True)
            return
        pad = model.engine.device.startswith("cuda") if s.pad_to_bucket is None else s.pad_to_bucket
        self.batcher = Batcher(
            model.infer, s.max_batch_size, s.max_wait_ms / 1000.0, s.max_queue_size,
            pad_buckets=s.batch_buckets() if pad else None,
            on_batch=self.metrics.observe_batch, on_depth=self.metrics.queue_depth.set,
        )
        self.batcher.start()
        self.model = model
        self.metrics.bind_model(model.manifest, model.engine.describe())
        self.metrics.ready.set(1)
        self.phase = Phase.READY
        logger.info("ready", extra={"fields": {**model.engine.describe(), "max_batch_size": s.max_batch_size,
                                               "max_wait_ms": s.max_wait_ms, "padded_batches": pad}})

    async def stop(self) -> None:
        """Finish queued and running work (graceful), then free the engine and threads."""
        self.phase = Phase.STOPPING
        self.metrics.ready.set(0)
        if self._start_task is not None and not self._start_task.done():
            self._start_task.cancel()
        if self.batcher is not None:
            await self.batcher.stop(self.settings.graceful_shutdown_s)
        if self.model is not None:
            self.model.engine.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        logger.info("stopped")

    def require_ready(self) -> tuple[LoadedModel, Batcher]:
        """The model and batcher, or 503 with ``Retry-After`` while loading or stopping."""
        if self.phase is not Phase.READY or self.model is None or self.batcher is None:
            headers = {"Retry-After": str(self.settings.retry_after_s)}
            raise NotReadyError(f"the model is not ready (state: {self.phase.value})", headers=headers)
        return self.model, self.batcher

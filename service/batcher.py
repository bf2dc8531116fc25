"""Dynamic batching: gather queued images into one forward pass, route the rows back.

Requests put their preprocessed images on a bounded queue and await one future per image. A
single worker task takes the first waiting image, keeps collecting until ``max_batch_size``
images or until the first one has waited ``max_wait_s`` (whichever comes first), stacks them, runs
the engine once in a dedicated inference thread (so the event loop keeps accepting and
preprocessing while the forward runs) and resolves each future with its row of the outputs.

Images whose future is already done (the request's client disconnected, or its deadline passed)
are dropped before they reach a batch. A failing forward fails only the futures of that batch.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from service.engines.base import EngineOutputs

__all__ = [
    "Batcher",
    "Row",
    "QueueFullError",
    "DeadlineExceededError",
    "InferenceError",
    "BatcherClosedError",
]

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class Row:
    """One image's share of a forward pass."""

    outputs: dict[str, np.ndarray]  # logits (K,), probs (K,), delta_energy (), energy ()
    batch_size: int  # images in the forward that produced it (padding excluded)


class QueueFullError(RuntimeError):
    """The queue cannot take the request's images now (overload)."""


class BatcherClosedError(RuntimeError):
    """The batcher is shutting down and takes no new work."""


class DeadlineExceededError(TimeoutError):
    """The image waited in the queue past its request's deadline."""


class InferenceError(RuntimeError):
    """The forward pass of the image's batch failed."""


@dataclass(eq=False)
class _Pending:
    pixels: np.ndarray  # (3, H, W) float32
    future: asyncio.Future[Row]
    enqueued_at: float  # loop.time()
    deadline: float  # loop.time() after which the image is not worth a forward
    queued: bool = field(default=True)  # still counted in the queue depth


class Batcher:
    """Gathers images into batches for one engine.

    Args:
        infer: the engine's blocking forward, (B, 3, H, W) -> outputs; run in one thread.
        max_batch_size: largest batch.
        max_wait_s: longest time the first image of a batch waits for company.
        max_queue_size: most images waiting; a submission that would exceed it is refused.
        pad_buckets: if given, batches are zero-padded to the smallest bucket that holds them
            (stable shapes for CUDA kernels); the padding rows are discarded.
        on_batch: called with (batch size, forward seconds) after every forward.
        on_depth: called with the queue depth whenever it changes.
    """

    def __init__(
        self,
        infer: Callable[[np.ndarray], EngineOutputs],
        max_batch_size: int,
        max_wait_s: float,
        max_queue_size: int,
        pad_buckets: Sequence[int] | None = None,
        on_batch: Callable[[int, float], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
    ) -> None:
        self._infer = infer
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue_size = max_queue_size
        self._buckets = sorted(pad_buckets) if pad_buckets else None
        self._on_batch = on_batch or (lambda size, seconds: None)
        self._on_depth = on_depth or (lambda depth: None)
        self._queue: deque[_Pending] = deque()
        self._depth = 0  # queued images whose futures are not done
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()  # set while no forward runs
        self._idle.set()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="deltagate-infer")
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def depth(self) -> int:
        """Images waiting for a forward."""
        return self._depth

    def start(self) -> None:
        """Start the worker task on the running loop."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="deltagate-batcher")

    def submit(self, images: Sequence[np.ndarray], timeout_s: float) -> list[asyncio.Future[Row]]:
        """Queue a request's images, all or none.

        Args:
            images: preprocessed images, each (3, H, W) float32.
            timeout_s: seconds from now after which a still-queued image is dropped.

        Returns:
            One future per image, resolved with its row, or failed with
            :class:`DeadlineExceededError` / :class:`InferenceError`.

        Raises:
            QueueFullError: the queue cannot hold the images now.
            BatcherClosedError: shutting down.
        """
        if self._closing:
            raise BatcherClosedError("the service is shutting down")
        if self._depth + len(images) > self.max_queue_size:
            raise QueueFullError(f"queue full ({self._depth}/{self.max_queue_size} images waiting)")
        loop = asyncio.get_running_loop()
        now = loop.time()
        futures: list[asyncio.Future[Row]] = []
        for pixels in images:
            item = _Pending(pixels, loop.create_future(), now, now + timeout_s)
            item.future.add_done_callback(functools.partial(self._on_done, item))
            self._queue.append(item)
            futures.append(item.future)
        self._depth += len(images)
        self._on_depth(self._depth)
        self._wakeup.set()
        return futures

    def _on_done(self, item: _Pending, _future: asyncio.Future[Row]) -> None:
        self._release(item)

    def _release(self, item: _Pending) -> None:
        """Take an image out of the depth count (idempotent)."""
        if item.queued:
            item.queued = False
            self._depth -= 1
            self._on_depth(self._depth)

    def _pop_live(self, now: float) -> _Pending | None:
        """The next image still worth a forward; drops cancelled and expired ones."""
        while self._queue:
            item = self._queue.popleft()
            if item.future.done():  # client gone or request timed out: never reaches a batch
                continue
            if now > item.deadline:
                item.future.set_exception(DeadlineExceededError("waited in the queue past the deadline"))
                continue
            self._release(item)
            return item
        return None

    async def _collect(self) -> list[_Pending]:
        """Wait for the first image, then gather until the batch is full or its wait is over."""
        loop = asyncio.get_running_loop()
        first = self._pop_live(loop.time())
        while first is None:
            self._wakeup.clear()
            await self._wakeup.wait()
            first = self._pop_live(loop.time())
        batch = [first]
        wait_until = first.enqueued_at + self.max_wait_s
        while len(batch) < self.max_batch_size:
            item = self._pop_live(loop.time())
            if item is not None:
                batch.append(item)
                continue
            remaining = wait_until - loop.time()
            if remaining <= 0:
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break
        return batch

    def _stack(self, batch: list[_Pending]) -> np.ndarray:
        pixels = np.stack([item.pixels for item in batch])  # (B, 3, H, W)
        if self._buckets:
            size = next((b for b in self._buckets if b >= len(batch)), len(batch))
            pad = np.zeros((size - len(batch), *pixels.shape[1:]), dtype=pixels.dtype)  # (P, 3, H, W)
            pixels = np.concatenate([pixels, pad])  # (bucket, 3, H, W)
        return pixels

    async def _forward(self, batch: list[_Pending]) -> None:
        """One forward for the batch; each future gets its row, or the batch's error."""
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        self._idle.clear()
        try:
            outputs = await loop.run_in_executor(self._executor, self._infer, self._stack(batch))
        except asyncio.CancelledError:  # stop() past its timeout: nobody will read these rows
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(BatcherClosedError("the service shut down during the forward"))
            raise
        except Exception as exc:
            logger.exception("forward of a batch of %d images failed", len(batch))
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(InferenceError(f"inference failed: {type(exc).__name__}"))
            return
        finally:
            self._idle.set()
        self._on_batch(len(batch), time.perf_counter() - start)
        for i, item in enumerate(batch):
            if not item.future.done():  # the request may have given up meanwhile
                item.future.set_result(Row({name: arr[i] for name, arr in outputs.items()}, len(batch)))

    async def _run(self) -> None:
        while True:
            batch = await self._collect()
            await self._forward(batch)

    async def stop(self, timeout_s: float = 30.0) -> None:
        """Refuse new work, finish what is queued and running (up to ``timeout_s``), then stop."""
        self._closing = True
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while (self._depth > 0 or not self._idle.is_set()) and loop.time() < end:
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for item in self._queue:
            if not item.future.done():
                item.future.set_exception(BatcherClosedError("the service shut down before this image ran"))
        self._queue.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)

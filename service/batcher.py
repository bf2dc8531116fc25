"""Adaptive batching over engine instances, with admission before any work is done.

Admission: a request is refused at once (:meth:`Batcher.check_room`) if the budget is spent
before its body is read; it reserves its images (:meth:`Batcher.admit`) once its body has
arrived, so a slow sender never holds any of the budget while its body trickles in. The budget
``max_queue_size`` counts every image admitted and not yet in a forward (being parsed, decoded or
queued); :class:`service.admission.Admission` owns that count. Over it,
:class:`~service.errors.OverloadedError` (503) comes back at once and nothing of the request is decoded.

Batching: one worker task per engine instance, each with its own inference thread, all fed from
one queue. An idle instance takes whatever is waiting at once (up to ``max_batch_size``); images
gather into larger batches only while every instance is busy (infinity's and Triton's dynamic
batching). ``max_wait_s > 0`` makes a batch's first image wait that long for company even on an
idle instance (the classic timeout batcher). Only one idle instance collects at a time, so a
waiting batch is not split between idle instances. Batches are stacked (and padded) inside the
instance's thread, not on the event loop.

Images whose future is already done (the client disconnected, the deadline passed) are dropped
before they reach a batch. A failing forward fails only the futures of its batch. Errors are the
service's own (:mod:`service.errors`), mapped to HTTP by its one handler.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.admission import Admission, Ticket
from service.engines.base import EngineOutputs
from service.errors import DeadlineError, InferenceFailedError, NotReadyError

__all__ = ["Batcher", "Row"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Row:
    """One image's share of a forward pass."""

    outputs: dict[str, np.ndarray]  # logits (K,), probs (K,), delta_energy (), energy ()
    batch_size: int  # images in the forward that produced it (padding excluded)
    instance: int = 0  # which engine instance ran it


@dataclass(eq=False)
class _Pending:
    pixels: Any  # (3, H, W) float32: NumPy, or a torch tensor on the engine's device (device input path)
    future: asyncio.Future[Row]
    enqueued_at: float  # loop.time()
    deadline: float  # loop.time() after which the image is not worth a forward
    queued: bool = field(default=True)  # still counted in the queue depth


def _stack_numpy(pixels: list[np.ndarray], rows: int) -> np.ndarray:
    """The images as one batch, zero-padded to ``rows`` rows."""
    x = np.stack(pixels)  # (B, 3, H, W)
    if rows > len(pixels):
        pad = np.zeros((rows - len(pixels), *x.shape[1:]), dtype=x.dtype)  # (P, 3, H, W)
        x = np.concatenate([x, pad])  # (rows, 3, H, W)
    return x


class Batcher:
    """Gathers images into batches for a group of engine instances.

    Args:
        instances: each instance's blocking forward, (B, 3, H, W) -> outputs; each runs in its own thread.
        max_batch_size: largest batch.
        max_wait_s: how long a batch's first image waits for company on an idle instance (0: none).
        max_queue_size: most images admitted and not yet in a forward.
        pad_buckets: if given, batches are zero-padded to the smallest bucket that holds them
            (stable shapes for CUDA kernels); the padding rows are discarded.
        on_batch: called with (batch size, forward seconds) after every forward.
        on_depth: called with :attr:`depth` whenever it changes.
        stack: builds a batch of ``rows`` rows (padding included) from the queued images, in the
            instance's thread; default: NumPy stack + zero rows. The device input path passes one
            that stacks device tensors (:func:`service.device_input.stack_pixels`).
        thread_initializer: run first in each inference thread (the server lowers its priority).
    """

    def __init__(
        self,
        instances: Sequence[Callable[[Any], EngineOutputs]],
        max_batch_size: int,
        max_wait_s: float,
        max_queue_size: int,
        pad_buckets: Sequence[int] | None = None,
        on_batch: Callable[[int, float], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
        stack: Callable[[list[Any], int], Any] | None = None,
        thread_initializer: Callable[[], None] | None = None,
    ) -> None:
        if not instances:
            raise ValueError("at least one engine instance is needed")
        self._instances = list(instances)
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.admission = Admission(max_queue_size, on_change=on_depth)
        self._buckets = sorted(pad_buckets) if pad_buckets else None
        self._on_batch = on_batch or (lambda size, seconds: None)
        self._stack = stack or _stack_numpy
        self._queue: deque[_Pending] = deque()
        self._wakeup = asyncio.Event()
        self._collecting = asyncio.Lock()  # one idle instance gathers a batch at a time
        self._executors = [
            ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"deltagate-infer-{i}", initializer=thread_initializer)
            for i in range(len(self._instances))
        ]
        self._jobs: dict[int, concurrent.futures.Future[tuple[EngineOutputs, float]]] = {}  # last job per instance
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    @property
    def depth(self) -> int:
        """Images admitted and not yet in a forward (reserved + queued)."""
        return self.admission.depth

    @property
    def queued(self) -> int:
        """Images decoded and waiting for a forward (the part of :attr:`depth` past decoding)."""
        return self.admission.queued

    def _running(self) -> list[concurrent.futures.Future[tuple[EngineOutputs, float]]]:
        """Forwards still inside an engine (a cancelled request does not stop its thread)."""
        return [job for job in self._jobs.values() if not job.done()]

    @property
    def busy_instances(self) -> int:
        """Instances running a forward now."""
        return len(self._running())

    def start(self) -> None:
        """Start one worker task per instance on the running loop."""
        if not self._tasks:
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._worker(i), name=f"deltagate-batcher-{i}")
                           for i in range(len(self._instances))]

    # --- admission --------------------------------------------------------------------------------
    def check_room(self, images: int = 1) -> None:
        """Refuse now if ``images`` more would not fit; reserves nothing (before a request's body is read).

        Raises:
            NotReadyError: shutting down.
            OverloadedError: the budget is spent.
        """
        if self._closing:
            raise NotReadyError("the service is shutting down")
        self.admission.check(images)

    def admit(self, images: int = 1) -> Ticket:
        """Reserve room for a request's images before any of its CPU work is done (parsing, decoding).

        Args:
            images: how many to reserve now (1 before the body is parsed: the count is not known yet).

        Raises:
            NotReadyError: shutting down.
            OverloadedError: the budget is spent.
        """
        self.check_room(images)  # new requests only: an admitted one's ticket may still grow while shutting down
        return self.admission.admit(images)

    # --- queueing ---------------------------------------------------------------------------------
    def submit(
        self, images: Sequence[Any], timeout_s: float, ticket: Ticket | None = None
    ) -> list[asyncio.Future[Row]]:
        """Queue a request's images, all or none.

        Args:
            images: preprocessed images, each (3, H, W) float32.
            timeout_s: seconds from now after which a still-queued image is dropped.
            ticket: the request's admission; its images move from reserved to queued. Without one
                (tests, in-process callers), the images are admitted here.

        Returns:
            One future per image, resolved with its row, or failed with
            :class:`~service.errors.DeadlineError` / :class:`~service.errors.InferenceFailedError`.

        Raises:
            OverloadedError: no ticket and the budget cannot hold the images now.
            NotReadyError: no ticket and shutting down (admitted requests still finish).
        """
        n = len(images)
        if ticket is None:
            ticket = self.admit(n)
        else:
            ticket.grow(n)
        loop = asyncio.get_running_loop()
        now = loop.time()
        futures: list[asyncio.Future[Row]] = []
        for pixels in images:
            item = _Pending(pixels, loop.create_future(), now, now + timeout_s)
            item.future.add_done_callback(functools.partial(self._on_done, item))
            self._queue.append(item)
            futures.append(item.future)
        ticket.queue(n)  # reserved -> queued, with no await in between
        self._wakeup.set()
        return futures

    def _on_done(self, item: _Pending, _future: asyncio.Future[Row]) -> None:
        self._release(item)

    def _release(self, item: _Pending) -> None:
        """Take an image out of the depth count (idempotent)."""
        if item.queued:
            item.queued = False
            self.admission.leave_queue()

    def _pop_live(self, now: float) -> _Pending | None:
        """The next image still worth a forward; drops cancelled and expired ones."""
        while self._queue:
            item = self._queue.popleft()
            if item.future.done():  # client gone or request timed out: never reaches a batch
                continue
            if now > item.deadline:
                item.future.set_exception(DeadlineError("the request waited in the queue past its deadline"))
                continue
            self._release(item)
            return item
        return None

    # --- batching ---------------------------------------------------------------------------------
    async def _collect(self) -> list[_Pending]:
        """Wait for the first image; take what else is waiting; wait ``max_wait_s`` for more if set."""
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

    def _stack_and_infer(self, instance: int, pixels: list[Any]) -> tuple[EngineOutputs, float]:
        """In the instance's thread: stack (and pad) the batch, run the forward; returns (outputs, seconds)."""
        start = time.perf_counter()
        rows = next((b for b in self._buckets if b >= len(pixels)), len(pixels)) if self._buckets else len(pixels)
        x = self._stack(pixels, rows)  # (rows, 3, H, W)
        outputs = self._instances[instance](x)
        return outputs, time.perf_counter() - start

    async def _forward(self, instance: int, batch: list[_Pending]) -> None:
        """One forward on ``instance``; each future gets its row, or the batch's error."""
        job = self._executors[instance].submit(self._stack_and_infer, instance, [it.pixels for it in batch])
        self._jobs[instance] = job
        try:
            outputs, seconds = await asyncio.wrap_future(job)
        except asyncio.CancelledError:  # stop() past its drain time: nobody will read these rows
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(NotReadyError("the service shut down during the forward"))
            raise
        except Exception as exc:
            logger.exception("forward of a batch of %d images failed (instance %d)", len(batch), instance)
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(InferenceFailedError(f"inference failed: {type(exc).__name__}"))
            return
        self._on_batch(len(batch), seconds)
        for i, item in enumerate(batch):
            if not item.future.done():  # the request may have given up meanwhile
                row = {name: arr[i] for name, arr in outputs.items()}
                item.future.set_result(Row(row, len(batch), instance))

    async def _worker(self, instance: int) -> None:
        while True:
            async with self._collecting:
                batch = await self._collect()
            await self._forward(instance, batch)

    # --- shutdown ---------------------------------------------------------------------------------
    async def stop(self, timeout_s: float = 30.0) -> None:
        """Refuse new requests, finish admitted and running work (up to ``timeout_s``), then stop.

        Forwards still running after ``timeout_s`` cannot be interrupted; their rows are dropped
        (the requests get 503), and this waits for them to end anyway, so that the caller may close
        the engines safely afterwards.
        """
        self._closing = True
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while (self.depth > 0 or self._running()) and loop.time() < end:
            await asyncio.sleep(0.01)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._tasks = []
        for item in self._queue:
            if not item.future.done():
                item.future.set_exception(NotReadyError("the service shut down before this image ran"))
        self._queue.clear()
        running = self._running()
        if running:
            logger.warning("shutdown: waiting for %d running forward(s) before closing the engines", len(running))
            await asyncio.to_thread(concurrent.futures.wait, running)
        for executor in self._executors:
            executor.shutdown(wait=True)  # every job has ended: returns at once

"""Fixed-shape forwards on CUDA: one captured CUDA graph per batch-size bucket.

A ViT forward at small batch sizes on a current GPU is bound by kernel launches (hundreds of small
kernels, each a few microseconds of CPU time). Capturing the forward once per bucket as a CUDA graph
and replaying it turns those launches into one. The batcher already pads batches to the buckets on
CUDA (``Settings.pad_to_bucket``), so every forward has a captured shape; a batch that is not a
bucket is padded here, one larger than the largest bucket runs eagerly.

Why not ``torch.compile(mode="reduce-overhead")``: it also replays CUDA graphs, but compiles each
shape first (tens of seconds per bucket for a ViT-B/16, times ~9 buckets, at every start) and adds
a second code path to keep equal to the eager one. Hand capture costs one forward per bucket.

Graphs are captured largest bucket first, sharing one memory pool, so the smaller graphs reuse the
largest one's activations' memory. Outputs are cloned out of the graph's static tensors: the next
replay overwrites them.

Everything but the capture itself is plain tensor code, unit-tested on the CPU with an eager
"capture" (:func:`eager_capture`); the real capture (:func:`cuda_capture`) is tested on a GPU only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Captured", "BucketedForward", "bucket_for", "cuda_capture", "eager_capture"]

logger = logging.getLogger(__name__)

Forward = Callable[[torch.Tensor], Sequence[torch.Tensor]]


@dataclass
class Captured:
    """One bucket's replayable forward: write ``static_input``, call ``replay``, read ``static_outputs``."""

    static_input: torch.Tensor  # (bucket, 3, H, W)
    static_outputs: tuple[torch.Tensor, ...]  # each (bucket, ...)
    replay: Callable[[], None]


Capture = Callable[[Forward, torch.Tensor, Any], tuple[Captured, Any]]


def bucket_for(n: int, buckets: Sequence[int]) -> int | None:
    """The smallest bucket holding ``n`` rows, or None when ``n`` exceeds every bucket."""
    if n < 1:
        raise ValueError(f"a batch has at least one row, got {n}")
    return next((b for b in sorted(buckets) if b >= n), None)


def eager_capture(forward: Forward, static_input: torch.Tensor, pool: Any) -> tuple[Captured, Any]:
    """A stand-in for :func:`cuda_capture` that re-runs ``forward`` on the static tensors (CPU tests)."""
    outputs = tuple(forward(static_input))

    def replay() -> None:
        for static, fresh in zip(outputs, forward(static_input), strict=True):
            static.copy_(fresh)

    return Captured(static_input, outputs, replay), pool


def cuda_capture(forward: Forward, static_input: torch.Tensor, pool: Any) -> tuple[Captured, Any]:
    """Capture ``forward`` on ``static_input`` as a CUDA graph (warm-up on a side stream first).

    Args:
        forward: the model's forward, tensor in, tensors out.
        static_input: the input buffer the graph reads (on the GPU).
        pool: memory pool handle to share (None for the first graph).

    Returns:
        (the captured forward, the pool handle to pass to the next capture).
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):  # cuBLAS/cuDNN handles and workspace are created outside the capture
            forward(static_input)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
        outputs = tuple(forward(static_input))
    return Captured(static_input, outputs, graph.replay), graph.pool()


class BucketedForward:
    """``forward`` replayed from one captured graph per bucket.

    Args:
        forward: the model's forward (called under ``torch.no_grad``).
        buckets: batch sizes to capture.
        sample_shape: one input row's shape, e.g. (3, 224, 224).
        dtype: input dtype (float16 on CUDA).
        device: where the input lives.
        capture: :func:`cuda_capture` on a GPU; :func:`eager_capture` in CPU tests.
        channels_last: capture with a channels-last input buffer (NHWC convolution kernels).
    """

    def __init__(self, forward: Forward, buckets: Sequence[int], sample_shape: Sequence[int], dtype: torch.dtype,
                 device: torch.device, capture: Capture = cuda_capture, channels_last: bool = False) -> None:
        if not buckets:
            raise ValueError("at least one bucket is needed")
        self._forward = forward
        self.buckets = sorted(set(buckets))
        self._shape, self._dtype, self._device = tuple(sample_shape), dtype, device
        self._capture = capture
        self._channels_last = channels_last
        self._graphs: dict[int, Captured] = {}
        self.eager_calls = 0  # batches larger than every bucket (ran without a graph)

    def capture_all(self) -> None:
        """Capture every bucket, largest first (the smaller ones reuse its memory pool)."""
        pool = None
        with torch.no_grad():
            for b in sorted(self.buckets, reverse=True):
                static = torch.zeros((b, *self._shape), dtype=self._dtype, device=self._device)  # (b, 3, H, W)
                if self._channels_last:
                    static = static.contiguous(memory_format=torch.channels_last)
                self._graphs[b], pool = self._capture(self._forward, static, pool)
        logger.info("captured %d forward graphs", len(self._graphs), extra={"fields": {"buckets": self.buckets}})

    @property
    def captured(self) -> list[int]:
        """Buckets with a captured graph."""
        return sorted(self._graphs)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Outputs of the forward for ``x`` (B, 3, H, W), B rows each, owned by the caller."""
        n = x.shape[0]
        bucket = bucket_for(n, self.buckets)
        graph = self._graphs.get(bucket) if bucket is not None else None
        with torch.no_grad():
            if graph is None:
                self.eager_calls += 1
                return tuple(self._forward(x.to(self._device, self._dtype)))
            graph.static_input[:n].copy_(x)  # (n, 3, H, W) into the graph's buffer
            if n < bucket:  # type: ignore[operator]
                graph.static_input[n:].zero_()  # padding rows: zeros, as the batcher's
            graph.replay()
            return tuple(out[:n].clone() for out in graph.static_outputs)  # (n, ...) each

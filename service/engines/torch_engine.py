"""PyTorch engine: runs the bundle's scoring module; CUDA with float16 when available, else CPU."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from models.bundle import Bundle
from models.scoring_module import FEATURES_NAME, OUTPUT_NAMES, ScoringModule, load_scoring_module
from service.engines.base import Engine, EngineError, EngineOutputs, EngineThreads
from service.settings import DeviceName

if TYPE_CHECKING:
    from service.cuda_graphs import BucketedForward

__all__ = ["TorchEngine"]

logger = logging.getLogger(__name__)


class TorchEngine(Engine):
    """The scoring module from the bundle's safetensors weights.

    Threads: PyTorch's intra-op thread count (``torch.set_num_threads``) is process-global, not
    per session. Every instance sets the same value (the runtime gives all instances the same
    :class:`EngineThreads`), and each inference thread then runs its own intra-op team of that size,
    so N instances use N x ``intra_op`` threads, as with ONNX Runtime. Two engines in one process
    with different values would overwrite each other (the last ``load`` wins); the runtime never
    does that. ``inter_op`` and ``spin_wait`` are ONNX Runtime settings and do not apply here.

    On CUDA the vision tower runs in float16; the logits and scores are computed in float32
    (``ScoringModule.logits_from_features`` upcasts the features, and the score functions
    upcast), because differences of log-sum-exps at a logit scale of 100 lose all precision in
    half precision.
    """

    name = "torch"

    def __init__(self, bundle: Bundle, device: DeviceName = "auto", threads: EngineThreads | None = None) -> None:
        super().__init__(bundle, device, threads)
        self._module: ScoringModule | None = None
        self._outputs: list[str] = list(OUTPUT_NAMES)
        self._torch_device = torch.device("cpu")
        self._dtype = torch.float32
        self._graphed: BucketedForward | None = None  # CUDA graphs per bucket (enable_cuda_graphs)

    def load(self) -> None:
        cuda = torch.cuda.is_available()
        if self.requested_device == "cuda" and not cuda:
            raise EngineError("device=cuda was asked for but torch sees no CUDA device")
        use_cuda = cuda and self.requested_device != "cpu"
        if self.threads.intra_op and torch.get_num_threads() != self.threads.intra_op:
            torch.set_num_threads(self.threads.intra_op)  # process-global: see the class docstring
        self._torch_device = torch.device("cuda:0" if use_cuda else "cpu")
        self._dtype = torch.float16 if use_cuda else torch.float32
        module = load_scoring_module(self.bundle).eval()
        module.visual.to(self._torch_device, dtype=self._dtype)
        module.class_embeddings = module.class_embeddings.to(self._torch_device)  # stays float32
        module.features_output = self.bundle.has_text  # label sets are scored from the image features
        self._module = module
        self._outputs = list(OUTPUT_NAMES) + ([FEATURES_NAME] if self.bundle.has_text else [])
        self.device = str(self._torch_device)
        self.providers = [f"torch:{self.device}"]
        self.precision = "float16" if use_cuda else "float32"

    def enable_cuda_graphs(self, buckets: Sequence[int]) -> bool:
        """On CUDA: capture one CUDA graph per batch-size bucket (:mod:`service.cuda_graphs`); else nothing.

        Call after :meth:`load` and before serving (the capture needs the GPU to itself).

        Returns:
            Whether graphs are in use.
        """
        if self._module is None:
            raise EngineError("engine used before load()")
        if self._torch_device.type != "cuda":
            return False
        from service.cuda_graphs import BucketedForward

        size = self.bundle.manifest.preprocess.image_size
        graphed = BucketedForward(self._module, buckets, (3, size, size), self._dtype, self._torch_device,
                                  channels_last=True)
        graphed.capture_all()
        self._graphed = graphed
        return True

    def infer(self, pixel_values: np.ndarray | torch.Tensor) -> EngineOutputs:
        """One forward of a NumPy batch or a torch batch already on the device (the device input path)."""
        if self._module is None:
            raise EngineError("engine used before load()")
        x = torch.as_tensor(pixel_values).to(self._torch_device, dtype=self._dtype, non_blocking=True)  # (B, 3, H, W)
        if self._torch_device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)  # NHWC convolution kernels for the patch embedding
        with torch.inference_mode():
            outputs = self._graphed(x) if self._graphed is not None else self._module(x)
        return {name: t.float().cpu().numpy() for name, t in zip(self._outputs, outputs, strict=True)}

    def describe(self) -> dict[str, str]:
        buckets = self._graphed.captured if self._graphed is not None else []
        return {**super().describe(), "cuda_graphs": ",".join(map(str, buckets)) or "off"}

    def close(self) -> None:
        self._module = None
        self._graphed = None
        if self._torch_device.type == "cuda":
            torch.cuda.empty_cache()

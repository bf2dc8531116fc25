"""ONNX Runtime engine: the bundle's ``model.onnx``; CUDA execution provider when available.

Thread settings per instance (:class:`~service.engines.base.EngineThreads`) go into the session
options: ``intra_op_num_threads``, ``inter_op_num_threads`` and the spin-wait switches
``session.intra_op.allow_spinning`` / ``session.inter_op.allow_spinning``. Each instance owns its
session and therefore its own intra-op pool.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from models.bundle import Bundle
from models.scoring_spec import FEATURES_NAME, INPUT_NAME, OUTPUT_NAMES
from service.engines.base import Engine, EngineError, EngineOutputs, EngineThreads
from service.settings import DeviceName

__all__ = ["OnnxEngine"]

logger = logging.getLogger(__name__)

_CUDA_EP = "CUDAExecutionProvider"
_CPU_EP = "CPUExecutionProvider"


class OnnxEngine(Engine):
    """ONNX Runtime session over the exported scoring module (float32 on every provider)."""

    name = "onnx"
    disabled_optimizers: tuple[str, ...] = ()  # ONNX Runtime graph optimizers the session runs without

    def __init__(self, bundle: Bundle, device: DeviceName = "auto", threads: EngineThreads | None = None) -> None:
        super().__init__(bundle, device, threads)
        self._session = None
        self._outputs: list[str] = list(OUTPUT_NAMES)  # and the image features when the graph has them

    def _providers(self) -> list[str]:
        import onnxruntime as ort

        available = ort.get_available_providers()
        if self.requested_device == "cuda" and _CUDA_EP not in available:
            raise EngineError(
                f"device=cuda was asked for but ONNX Runtime has no {_CUDA_EP} "
                f"(available: {', '.join(available)}; install onnxruntime-gpu)"
            )
        if self.requested_device != "cpu" and _CUDA_EP in available:
            return [_CUDA_EP, _CPU_EP]
        return [_CPU_EP]

    def load(self) -> None:
        import onnxruntime as ort

        providers = self._providers()  # fails fast on device=cuda without the CUDA provider
        session = ort.InferenceSession(str(self.bundle.onnx_path), self._options(), providers=providers,
                                       disabled_optimizers=list(self.disabled_optimizers))
        names = [o.name for o in session.get_outputs()]
        if [i.name for i in session.get_inputs()] != [INPUT_NAME] or set(OUTPUT_NAMES) - set(names):
            raise EngineError(
                f"{self.bundle.onnx_path}: expected input {INPUT_NAME!r} and outputs {OUTPUT_NAMES}"
            )
        # ORT silently falls back to CPU when the CUDA provider fails to initialise (missing CUDA
        # libraries, no driver): refuse that when CUDA was asked for, and report what really runs.
        self.providers = list(session.get_providers())
        on_cuda = self.providers[0] == _CUDA_EP
        if self.requested_device == "cuda" and not on_cuda:
            raise EngineError(
                f"device=cuda was asked for but ONNX Runtime's {_CUDA_EP} failed to initialise; the session "
                f"would run on {', '.join(self.providers)} (check the CUDA/cuDNN libraries ONNX Runtime logged)"
            )
        if _CUDA_EP in providers and not on_cuda:
            logger.warning("%s is installed but failed to initialise: running on the CPU", _CUDA_EP)
        self._session = session
        self._outputs = list(OUTPUT_NAMES) + ([FEATURES_NAME] if FEATURES_NAME in names else [])
        self.device = "cuda:0" if on_cuda else "cpu"

    def _options(self) -> Any:  # an ort.SessionOptions (onnxruntime ships no type stubs)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        t = self.threads
        options.intra_op_num_threads = t.intra_op or 0  # 0 = ORT's default (one per physical core)
        options.inter_op_num_threads = t.inter_op
        spin = "1" if t.spin_wait else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        options.add_session_config_entry("session.inter_op.allow_spinning", spin)
        return options

    def infer(self, pixel_values: np.ndarray) -> EngineOutputs:
        if self._session is None:
            raise EngineError("engine used before load()")
        feed = {INPUT_NAME: np.ascontiguousarray(pixel_values, dtype=np.float32)}  # (B, 3, H, W)
        values = self._session.run(self._outputs, feed)
        return dict(zip(self._outputs, values, strict=True))

    def close(self) -> None:
        self._session = None

"""ONNX Runtime engine: the bundle's ``model.onnx``; CUDA execution provider when available."""

from __future__ import annotations

import logging

import numpy as np

from models.bundle import Bundle
from models.scoring_spec import INPUT_NAME, OUTPUT_NAMES
from service.engines.base import Engine, EngineError, EngineOutputs
from service.settings import DeviceName

__all__ = ["OnnxEngine"]

logger = logging.getLogger(__name__)

_CUDA_EP = "CUDAExecutionProvider"
_CPU_EP = "CPUExecutionProvider"


class OnnxEngine(Engine):
    """ONNX Runtime session over the exported scoring module (float32 on every provider)."""

    name = "onnx"

    def __init__(self, bundle: Bundle, device: DeviceName = "auto") -> None:
        super().__init__(bundle, device)
        self._session = None

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
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(self.bundle.onnx_path), options, providers=providers)
        names = [o.name for o in session.get_outputs()]
        if [i.name for i in session.get_inputs()] != [INPUT_NAME] or set(OUTPUT_NAMES) - set(names):
            raise EngineError(
                f"{self.bundle.onnx_path}: expected input {INPUT_NAME!r} and outputs {OUTPUT_NAMES}"
            )
        self._session = session
        # ORT silently falls back to CPU when the CUDA provider fails to initialise: report what runs.
        self.device = "cuda:0" if session.get_providers()[0] == _CUDA_EP else "cpu"

    def infer(self, pixel_values: np.ndarray) -> EngineOutputs:
        if self._session is None:
            raise EngineError("engine used before load()")
        feed = {INPUT_NAME: np.ascontiguousarray(pixel_values, dtype=np.float32)}  # (B, 3, H, W)
        values = self._session.run(list(OUTPUT_NAMES), feed)
        return dict(zip(OUTPUT_NAMES, values, strict=True))

    def close(self) -> None:
        self._session = None

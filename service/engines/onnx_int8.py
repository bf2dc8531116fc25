"""ONNX Runtime engine on the bundle's int8 graph (``model.int8.onnx``, ``deltagate export --quantize int8``).

The graph is the float32 one quantized by ONNX Runtime (int8 weights; see
:mod:`models.train.quantize`), so it runs on the CPU provider only. Its ΔEnergy differs slightly from
the float32 graph's, so the engine serves the bundle's int8 view (:meth:`models.bundle.Bundle.int8_variant`),
whose threshold is the one fitted on the int8 graph's own ID validation scores.
"""

from __future__ import annotations

from typing import Any

from models.bundle import Bundle
from service.engines.base import EngineError
from service.engines.onnx_engine import OnnxEngine

__all__ = ["OnnxInt8Engine"]


class OnnxInt8Engine(OnnxEngine):
    """:class:`OnnxEngine` over the int8 graph, with the int8 graph's threshold; CPU only."""

    name = "onnx-int8"

    def __init__(self, bundle: Bundle, *args: Any, **kwargs: Any) -> None:
        super().__init__(bundle.int8_variant(), *args, **kwargs)  # BundleError when there is no int8 graph
        self.precision = "int8"

    def _providers(self) -> list[str]:
        if self.requested_device == "cuda":
            raise EngineError("engine onnx-int8 runs on the CPU only (device=cuda was asked for); use onnx or torch")
        return ["CPUExecutionProvider"]

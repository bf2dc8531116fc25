"""ONNX Runtime engine on the bundle's float16 graph (``model.fp16.onnx``, ``deltagate export --quantize fp16``).

The graph (:mod:`models.train.float16`) runs the vision tower in float16 and the scores in float32, with float32
input and outputs, for ONNX Runtime's CUDA provider. It is served with the float32 threshold (see
:class:`models.bundle.Fp16Info`). Providers and device honesty are :class:`OnnxEngine`'s: CUDA when available,
and ``device=cuda`` refuses to start when the session would run elsewhere. On the CPU provider it runs too
(where a float16 kernel is missing, ONNX Runtime inserts casts to float32), which is for parity checks, not speed.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from models.bundle import FP16_DISABLED_OPTIMIZERS, Bundle
from service.engines.onnx_engine import OnnxEngine

__all__ = ["OnnxFp16Engine"]

logger = logging.getLogger(__name__)


@functools.cache  # once per process, however many instances load
def _warn_cpu() -> None:
    logger.warning("engine onnx-fp16 runs on the CPU: float16 on the CPU is for parity checks, not speed "
                   "(serve onnx or onnx-int8 there)")


class OnnxFp16Engine(OnnxEngine):
    """:class:`OnnxEngine` over the float16 graph."""

    name = "onnx-fp16"
    disabled_optimizers = FP16_DISABLED_OPTIMIZERS

    def __init__(self, bundle: Bundle, *args: Any, **kwargs: Any) -> None:
        super().__init__(bundle.fp16_variant(), *args, **kwargs)  # BundleError when there is no float16 graph
        self.precision = "float16"

    def load(self) -> None:
        super().load()
        if self.device == "cpu":
            _warn_cpu()

"""Inference engines behind one interface, chosen by name from an explicit registry."""

from __future__ import annotations

from models.bundle import Bundle
from service.engines.base import Engine, EngineError, EngineOutputs, EngineThreads, check_outputs
from service.engines.dummy import DummyEngine
from service.engines.onnx_engine import OnnxEngine
from service.engines.onnx_int8 import OnnxInt8Engine
from service.engines.torch_engine import TorchEngine
from service.settings import DeviceName

__all__ = ["ENGINES", "Engine", "EngineError", "EngineOutputs", "EngineThreads", "check_outputs", "create_engine"]

ENGINES: dict[str, type[Engine]] = {
    "torch": TorchEngine, "onnx": OnnxEngine, "dummy": DummyEngine,
    "onnx-int8": OnnxInt8Engine,  # the bundle's int8 graph (deltagate export --quantize int8)
}


def create_engine(
    name: str, bundle: Bundle, device: DeviceName = "auto", threads: EngineThreads | None = None
) -> Engine:
    """Instantiate a registered engine (not loaded yet); one call = one instance.

    Raises:
        EngineError: unknown name (the message lists the valid ones).
    """
    if name not in ENGINES:
        raise EngineError(f"unknown engine {name!r}; valid engines: {', '.join(ENGINES)}")
    return ENGINES[name](bundle, device, threads)

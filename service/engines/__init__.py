"""Inference engines behind one interface, chosen by name from an explicit registry.

The registry maps names to import paths, not classes: an engine's module (and what it needs —
torch and open_clip for ``torch``, ONNX Runtime for ``onnx``) is imported only when that engine is
created, so an ONNX-only install serves without torch (see ``docs/operations.md``, "Slim serving").
"""

from __future__ import annotations

import importlib

from models.bundle import Bundle
from service.engines.base import Engine, EngineError, EngineOutputs, EngineThreads, check_outputs
from service.settings import DeviceName

__all__ = ["ENGINES", "AUTO", "Engine", "EngineError", "EngineOutputs", "EngineThreads", "check_outputs",
           "create_engine", "engine_class", "resolve_engine_name"]

# name -> "module:class", imported on first use
ENGINES: dict[str, str] = {
    "torch": "service.engines.torch_engine:TorchEngine",
    "onnx": "service.engines.onnx_engine:OnnxEngine",
    "dummy": "service.engines.dummy:DummyEngine",
    "onnx-int8": "service.engines.onnx_int8:OnnxInt8Engine",  # the bundle's int8 graph (deltagate quantize)
    "onnx-fp16": "service.engines.onnx_fp16:OnnxFp16Engine",  # the bundle's float16 graph (CUDA provider)
}
AUTO = "auto"  # not an engine: resolved per bundle by resolve_engine_name


def resolve_engine_name(name: str, bundle: Bundle) -> str:
    """The engine to run: ``auto`` is ``onnx`` when the bundle has ``model.onnx``, else ``torch``.

    ONNX is preferred because its export was checked against the torch module (parity recorded in
    the manifest), it starts faster and smaller, and it needs no torch install. Any other name is
    returned unchanged.
    """
    if name != AUTO:
        return name
    return "onnx" if bundle.has_onnx else "torch"


def engine_class(name: str) -> type[Engine]:
    """The class of a registered engine, importing its module now.

    Raises:
        EngineError: unknown name (the message lists the valid ones), or the engine's dependencies
            are not installed (the message names the extra to install).
    """
    if name not in ENGINES:
        raise EngineError(f"unknown engine {name!r}; valid engines: {', '.join(ENGINES)} (or {AUTO})")
    module_name, _, class_name = ENGINES[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EngineError(
            f"engine {name!r} needs {exc.name or 'a missing package'}, which is not installed "
            "(the torch and dummy engines need the 'torch' extra: pip install 'deltagate[torch]')"
        ) from exc
    cls: type[Engine] = getattr(module, class_name)
    return cls


def create_engine(
    name: str, bundle: Bundle, device: DeviceName = "auto", threads: EngineThreads | None = None
) -> Engine:
    """Instantiate a registered engine (not loaded yet; one call = one instance); ``auto`` is resolved first.

    Raises:
        EngineError: unknown name, or its dependencies are missing.
    """
    return engine_class(resolve_engine_name(name, bundle))(bundle, device, threads)

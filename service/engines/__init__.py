"""Inference engines behind one interface, chosen by name from an explicit registry.

The registry maps names to import paths, not classes: an engine's module (and what it needs —
torch and open_clip for ``torch``, ONNX Runtime for ``onnx``) is imported only when that engine is
created, so an ONNX-only install serves without torch (see ``docs/operations.md``, "Slim serving").
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from models.bundle import Bundle
from models.errors import missing_module_message
from models.graph_choice import CPU_PROVIDER, CUDA_PROVIDER, GraphCheck, check_graphs
from service.engines.base import Engine, EngineError, EngineOutputs, EngineThreads, check_outputs
from service.settings import DeviceName

__all__ = ["ENGINES", "AUTO", "VARIANT_ENGINES", "Engine", "EngineChoice", "EngineError", "EngineOutputs",
           "EngineThreads", "check_outputs", "choose_engine", "create_engine", "engine_class", "resolve_engine_name"]

# name -> "module:class", imported on first use
ENGINES: dict[str, str] = {
    "torch": "service.engines.torch_engine:TorchEngine",
    "onnx": "service.engines.onnx_engine:OnnxEngine",
    "dummy": "service.engines.dummy:DummyEngine",
    "onnx-int8": "service.engines.onnx_int8:OnnxInt8Engine",  # the bundle's int8 graph (deltagate quantize)
    "onnx-fp16": "service.engines.onnx_fp16:OnnxFp16Engine",  # the bundle's float16 graph (CUDA provider)
}
AUTO = "auto"  # not an engine: resolved per bundle by choose_engine
VARIANT_ENGINES = {"int8": "onnx-int8", "fp16": "onnx-fp16"}  # graph tag -> the engine that serves it


@dataclass(frozen=True)
class EngineChoice:
    """Which engine serves, and why (``/model``, the start-up log and ``deltagate_model_info``).

    ``reason`` is a short code (a metric label): ``requested`` (an engine named explicitly), ``<graph>_passed``
    (``auto`` serves that graph), ``<graph>_<check code>`` (``auto`` serves float32 because of that graph's
    check, e.g. ``int8_parity_failed``), ``no_reduced_graph`` or ``no_onnx``. ``detail`` is the sentence.
    """

    requested: str
    engine: str
    reason: str
    detail: str
    checks: tuple[GraphCheck, ...] = ()

    def facts(self) -> dict[str, str]:
        return {"engine_requested": self.requested, "engine_reason": self.reason}

    def to_dict(self) -> dict[str, Any]:
        return {"requested": self.requested, "engine": self.engine, "reason": self.reason, "detail": self.detail,
                "checks": [c.to_dict() for c in self.checks]}


def _serving_provider(device: DeviceName) -> str:
    """Where an ONNX engine of this device setting runs: CUDA when asked for or (auto) when ONNX Runtime has it."""
    if device == "cpu":
        return CPU_PROVIDER
    if device == "cuda":
        return CUDA_PROVIDER
    import onnxruntime as ort

    return CUDA_PROVIDER if CUDA_PROVIDER in ort.get_available_providers() else CPU_PROVIDER


def choose_engine(name: str, bundle: Bundle, device: DeviceName = "auto") -> EngineChoice:
    """The engine to run, and why.

    An engine named explicitly is used as it is. ``auto`` serves the fastest reduced-precision graph of the
    bundle whose recorded parity with ``model.onnx`` passes the documented thresholds and whose recorded speed
    beats it, on the provider the service runs on (:mod:`models.graph_choice`); else ``onnx`` when the bundle
    has ``model.onnx`` (checked against the torch module at export, faster to start, no torch install needed);
    else ``torch``.
    """
    if name != AUTO:
        return EngineChoice(name, name, "requested", f"engine {name} was asked for")
    if not bundle.has_onnx:
        return EngineChoice(AUTO, "torch", "no_onnx", "the bundle has no model.onnx: the torch engine serves it")
    provider = _serving_provider(device)
    checks = tuple(check_graphs(bundle, provider))
    best = checks[0]
    if best.passed:
        return EngineChoice(AUTO, VARIANT_ENGINES[best.tag], f"{best.tag}_passed", best.detail, checks)
    present = [c for c in checks if c.code != "no_graph"]
    if not present:
        return EngineChoice(AUTO, "onnx", "no_reduced_graph", "the bundle has no int8 or float16 graph: model.onnx "
                            "(float32) serves it", checks)
    why = "; ".join(c.detail for c in present)
    return EngineChoice(AUTO, "onnx", f"{present[0].tag}_{present[0].code}", f"model.onnx (float32) serves: {why}",
                        checks)


def resolve_engine_name(name: str, bundle: Bundle, device: DeviceName = "auto") -> str:
    """The engine :func:`choose_engine` picks (its name only)."""
    return choose_engine(name, bundle, device).engine


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
        message = missing_module_message(exc.name, f"engine {name!r}")
        raise EngineError(message or f"engine {name!r} cannot be imported: {exc}") from exc
    cls: type[Engine] = getattr(module, class_name)
    return cls


def create_engine(
    name: str, bundle: Bundle, device: DeviceName = "auto", threads: EngineThreads | None = None
) -> Engine:
    """Instantiate a registered engine (not loaded yet; one call = one instance); ``auto`` is resolved first.

    Raises:
        EngineError: unknown name, or its dependencies are missing.
    """
    return engine_class(resolve_engine_name(name, bundle, device))(bundle, device, threads)

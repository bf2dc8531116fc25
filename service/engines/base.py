"""The engine interface: a batch of preprocessed pixels in, the scoring module's outputs out.

Every engine returns the outputs of :class:`models.scoring_module.ScoringModule` under the names in
:data:`models.scoring_module.OUTPUT_NAMES`, as float32 NumPy arrays on the CPU, so the batcher and
the post-processing never know which engine ran.
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass
from typing import get_args

import numpy as np

from models.bundle import Bundle
from models.errors import DeltagateError
from models.scoring_spec import FEATURES_NAME, OUTPUT_NAMES
from service.settings import DeviceName

__all__ = ["Engine", "EngineError", "EngineOutputs", "EngineThreads", "check_outputs"]

logger = logging.getLogger(__name__)

# name -> array: logits (B, K), probs (B, K), delta_energy (B,), energy (B,); and image_features (B, D) when
# the bundle has a text side (label sets are scored from them)
EngineOutputs = dict[str, np.ndarray]


class EngineError(DeltagateError, RuntimeError):
    """An engine could not be created or loaded (e.g. CUDA asked for but not available).

    A :class:`~models.errors.DeltagateError`: the CLI prints its message as one line.
    """


@dataclass(frozen=True)
class EngineThreads:
    """Thread settings of one engine instance (what the runtime derives from the CPU budget)."""

    intra_op: int | None = None  # threads inside one forward; None = the library's default (all cores)
    inter_op: int = 1  # threads running independent graph nodes in parallel (ONNX Runtime)
    spin_wait: bool = False  # idle pool threads spin instead of sleeping (ONNX Runtime)


class Engine(abc.ABC):
    """One way of running the bundle's scoring module; one object = one instance (own session).

    Args:
        bundle: the loaded bundle (manifest and files).
        device: "auto", "cpu" or "cuda"; the engine resolves "auto" in :meth:`load`. An engine
            asked for "cuda" raises :class:`EngineError` in :meth:`load` unless it really runs there.
        threads: thread settings of this instance.
    """

    name: str = "base"

    def __init__(self, bundle: Bundle, device: DeviceName = "auto", threads: EngineThreads | None = None) -> None:
        if device not in get_args(DeviceName):
            raise EngineError(f"unknown device {device!r}; valid devices: {', '.join(get_args(DeviceName))}")
        self.bundle = bundle
        self.requested_device = device
        self.threads = threads or EngineThreads()
        self.device = "unloaded"  # the resolved device, e.g. "cpu" or "cuda:0", set by load()
        self.precision = "float32"  # dtype of the forward pass, shown in /model
        self.providers: list[str] = []  # what really runs the forward (ONNX Runtime providers, torch device)

    @abc.abstractmethod
    def load(self) -> None:
        """Build the model on its device. Blocking; called once, off the event loop."""

    @abc.abstractmethod
    def infer(self, pixel_values: np.ndarray) -> EngineOutputs:
        """Run one forward pass. Blocking; called from the single inference thread.

        Args:
            pixel_values: float32 (B, 3, H, W), preprocessed with the bundle's config.

        Returns:
            The four outputs named in ``OUTPUT_NAMES``, float32, batch-first.
        """

    def close(self) -> None:  # noqa: B027 (optional hook, most engines hold nothing to free)
        """Release what the engine holds."""

    def describe(self) -> dict[str, str]:
        """Engine facts for ``/model``, the start-up log and the model-info metric (strings only)."""
        return {"engine": self.name, "device": self.device, "precision": self.precision,
                "providers": ",".join(self.providers),
                "intra_op_threads": str(self.threads.intra_op) if self.threads.intra_op else "default"}


def check_outputs(outputs: EngineOutputs, batch_size: int, num_classes: int) -> EngineOutputs:
    """Validate an engine's outputs (names, shapes) and cast them to float32.

    Args:
        outputs: what the engine returned.
        batch_size: B of the input.
        num_classes: K of the bundle.

    Returns:
        The outputs as float32 arrays.

    Raises:
        EngineError: a name is missing or a shape is wrong (the image features, when given, must be (B, D)).
    """
    missing = [n for n in OUTPUT_NAMES if n not in outputs]
    if missing:
        raise EngineError(f"engine outputs lack {missing}")
    expected = {"logits": (batch_size, num_classes), "probs": (batch_size, num_classes),
                "delta_energy": (batch_size,), "energy": (batch_size,)}
    if FEATURES_NAME in outputs:
        dims = np.shape(outputs[FEATURES_NAME])
        expected[FEATURES_NAME] = (batch_size, dims[1] if len(dims) == 2 else -1)  # (B, D), any D
    checked = {}
    for name, shape in expected.items():
        arr = np.asarray(outputs[name], dtype=np.float32)
        if arr.shape != shape:
            raise EngineError(f"engine output {name} has shape {arr.shape}, expected {shape}")
        checked[name] = arr
    return checked

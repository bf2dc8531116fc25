"""The dummy engine: deterministic outputs from pixel statistics, no weights; for tests.

Logits come from the mean pixel value of K vertical strips of the image (strip k brighter ->
class k), so a test can draw an image of a chosen class. The scores are computed with the real
score functions of :mod:`models.scores`. It records every batch it runs so tests can assert
batching through the engine rather than through timing, and it can be made to block or fail.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import torch

from models.bundle import Bundle
from models.scores import delta_energy, energy
from service.engines.base import Engine, EngineOutputs
from service.settings import DeviceName

__all__ = ["DummyEngine"]


class DummyEngine(Engine):
    """Engine without weights; see the module docstring."""

    name = "dummy"
    logit_gain = 20.0  # logits = gain * strip means: peaked images get a large ΔEnergy

    def __init__(self, bundle: Bundle, device: DeviceName = "auto") -> None:
        super().__init__(bundle, device)
        self.batch_sizes: list[int] = []  # one entry per forward, in order
        self.gate: threading.Event | None = None  # if set, each forward waits for it
        self.fail_with: Callable[[np.ndarray], Exception | None] | None = None  # raise what it returns
        self._lock = threading.Lock()

    def load(self) -> None:
        self.device = "cpu"

    @property
    def forward_count(self) -> int:
        return len(self.batch_sizes)

    def infer(self, pixel_values: np.ndarray) -> EngineOutputs:
        with self._lock:
            self.batch_sizes.append(int(pixel_values.shape[0]))
        if self.gate is not None:
            self.gate.wait(timeout=30.0)
        if self.fail_with is not None and (exc := self.fail_with(pixel_values)) is not None:
            raise exc
        num_classes = len(self.bundle.manifest.classes)
        strips = np.array_split(pixel_values.mean(axis=(1, 2)), num_classes, axis=-1)  # K x (B, W/K)
        means = np.stack([s.mean(axis=-1) for s in strips], axis=-1)  # (B, K)
        logits = torch.from_numpy(self.logit_gain * means.astype(np.float32))  # (B, K)
        p = self.bundle.manifest.scores
        return {
            "logits": logits.numpy(),
            "probs": torch.softmax(logits, dim=-1).numpy(),  # (B, K)
            "delta_energy": delta_energy(logits, p.top_c, p.reset_logit, p.temperature).numpy(),  # (B,)
            "energy": energy(logits, p.temperature).numpy(),  # (B,)
        }

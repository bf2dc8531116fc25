"""The dummy engine and its in-memory bundle: deterministic outputs from pixel statistics, no weights.

Logits come from the mean pixel value of K vertical strips of the image (strip k brighter ->
class k), so a test can draw an image of a chosen class. The scores are computed with the real
score functions of :mod:`models.scores`. It holds no state between forwards; tests that need to
count, block or fail forwards subclass it (``tests/service_support.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.bundle import ArchitectureInfo, Bundle, BundleManifest
from models.calibration import CalibrationRecord
from models.preprocess import PreprocessConfig
from service.engines.base import Engine, EngineOutputs

__all__ = ["DummyEngine", "dummy_bundle"]


def dummy_bundle(num_classes: int) -> Bundle:
    """An in-memory bundle for the dummy engine: no files, 32 px inputs, a fixed calibration.

    The calibration scores span 2..40, so a uniform image (ΔEnergy ≈ 0.3 under the dummy engine)
    is OOD and an image bright in one strip (ΔEnergy ≈ 40) is in-distribution.
    """
    manifest = BundleManifest(
        name="dummy", version="0", architecture=ArchitectureInfo(model_name="dummy", open_clip_config={}),
        preprocess=PreprocessConfig(image_size=32), classes=[f"class_{i}" for i in range(num_classes)],
        logit_scale=100.0, calibration=CalibrationRecord.from_scores(np.linspace(2.0, 40.0, 201)), files={},
    )
    return Bundle(Path("<dummy>"), manifest)


class DummyEngine(Engine):
    """Engine without weights; see the module docstring."""

    name = "dummy"
    logit_gain = 20.0  # logits = gain * strip means: peaked images get a large ΔEnergy

    def load(self) -> None:
        self.device = "cpu"
        self.providers = ["numpy"]

    def infer(self, pixel_values: np.ndarray) -> EngineOutputs:
        # Imported here, not at the top: the runtime imports dummy_bundle on every install, and the
        # ONNX-only install has no torch (the dummy engine itself needs the 'torch' extra).
        import torch

        from models.scores import id_score

        num_classes = len(self.bundle.manifest.classes)
        strips = np.array_split(pixel_values.mean(axis=(1, 2)), num_classes, axis=-1)  # K x (B, W/K)
        means = np.stack([s.mean(axis=-1) for s in strips], axis=-1)  # (B, K)
        logits = torch.from_numpy(self.logit_gain * means.astype(np.float32))  # (B, K)
        p = self.bundle.manifest.scores
        return {
            "logits": logits.numpy(),
            "probs": torch.softmax(logits, dim=-1).numpy(),  # (B, K)
            # The bundle's score parameters through the one registry, as the exported module computes them.
            "delta_energy": id_score("delta_energy", logits, self.logit_gain, p).numpy(),  # (B,)
            "energy": (-id_score("energy", logits, self.logit_gain, p)).numpy(),  # (B,) the energy itself
        }

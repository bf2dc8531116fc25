"""Shared fixtures: tiny in-memory models and real tiny bundles (no downloads)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ASSETS = Path(__file__).parent / "assets"
MICRO_ARCH = "micro-clip"  # tests/assets/micro-clip.json: a 2-layer ViT, 32 px, ~0.1 M vision params
MICRO_CLASSES = ["circle", "square", "triangle", "star"]


def pytest_report_header(config: pytest.Config) -> str | None:
    """Say at the start whether the container tests (tests/container) will run, and if not why."""
    if config.getoption("markexpr", "") == "not container":
        return None
    from deploy.containers.engine import unavailable_reason

    reason = unavailable_reason()
    return "containers: podman runs here (tests/container run)" if reason is None else \
        f"containers: tests/container skip: {reason}"


@pytest.fixture(scope="session")
def micro_clip():
    """A randomly initialised micro CLIP (seeded) with its config, preprocessing and tokenizer."""
    from models.clip_loading import load_clip, register_architecture

    register_architecture(ASSETS / f"{MICRO_ARCH}.json")
    torch.manual_seed(0)
    return load_clip(MICRO_ARCH)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, micro_clip) -> Path:
    """A real exported bundle (weights + ONNX + calibration) of the micro CLIP, 4 classes."""
    from models.bundle import ArchitectureInfo
    from models.calibration import CalibrationRecord
    from models.preprocess import preprocess_batch
    from models.scores import ScoreParams
    from models.train.export import export_bundle, parity_images, scoring_module_from_clip

    out = tmp_path_factory.mktemp("bundles") / "micro"
    module = scoring_module_from_clip(micro_clip, MICRO_CLASSES, score_params=ScoreParams(delta_energy_top_c=2))
    with torch.no_grad():  # calibrate on the module's own ΔEnergy of 64 drawings, as `calibrate` does
        pixels = torch.from_numpy(preprocess_batch(parity_images(64, seed=1), micro_clip.preprocess))
        calib = CalibrationRecord.from_scores(module(pixels)[2].numpy())
    export_bundle(
        out, module, name="micro-test", version="0.0.1",
        architecture=ArchitectureInfo(model_name=MICRO_ARCH, open_clip_config=micro_clip.config),
        preprocess=micro_clip.preprocess, classes=MICRO_CLASSES, prompt={"method": "zero-shot"},
        calibration=calib,
    )
    return out

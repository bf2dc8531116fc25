"""Shared fixtures: tiny in-memory models and real tiny bundles (no downloads)."""

from __future__ import annotations

import gc
import signal
from collections.abc import Iterator
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


@pytest.fixture(autouse=True)
def _unfrozen_heap() -> Iterator[None]:
    """Give the garbage collector back what a test's app froze at readiness (``gc_freeze``): in a
    server process the frozen heap lives as long as the process, in the test process the next tests
    would otherwise never collect the cycles of every app started before them."""
    yield
    gc.unfreeze()


@pytest.fixture(autouse=True)
def _signal_handlers_restored() -> Iterator[None]:
    """A test that ran code in this process (a CLI command, a server) must leave SIGTERM and SIGINT
    as it found them: a handler left behind (one that raised SystemExit) turned a SIGTERM meant to
    stop the test session into a failure of whatever test was running, and the session went on."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    changed = [sig.name for sig, handler in before.items() if signal.getsignal(sig) is not handler]
    for sig, handler in before.items():
        signal.signal(sig, handler)
    assert not changed, f"the test left its own handler for {', '.join(changed)}"


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


@pytest.fixture(scope="session")
def text_bundle(tmp_path_factory, micro_clip) -> Path:
    """A micro-CLIP bundle with a text side: 4 classes baked from a (random) learned context, calibrated, and
    a default rule per prompt mode fitted on drawings (labels assigned in turn: a plumbing check, not a model)."""
    import numpy as np

    from models.bundle import ArchitectureInfo, load_bundle, update_manifest
    from models.calibration import CalibrationRecord
    from models.label_set_create import VisionFeatures
    from models.preprocess import preprocess_batch
    from models.prompt_learner import PromptLearner
    from models.scores import ScoreParams
    from models.train.export import export_bundle, parity_images, scoring_module_from_clip
    from models.train.label_rules import LabelledFeatures, fit_adhoc_rule
    from models.train.text_export import export_text_side

    out = tmp_path_factory.mktemp("bundles") / "micro-text"
    torch.manual_seed(1)
    learner = PromptLearner(micro_clip.model, micro_clip.tokenizer, MICRO_CLASSES, n_ctx=4)
    module = scoring_module_from_clip(micro_clip, MICRO_CLASSES, learner.bake(), ScoreParams(delta_energy_top_c=1))
    export_bundle(out, module, name="micro-text", version="0.0.1",
                  architecture=ArchitectureInfo(model_name=MICRO_ARCH, open_clip_config=micro_clip.config),
                  preprocess=micro_clip.preprocess, classes=MICRO_CLASSES, prompt={"method": "coop", "n_ctx": 4})
    export_text_side(out, micro_clip, ctx=learner.ctx.detach(), learned_prefix=learner.prefix_text,
                     baked_mode="learned")
    pixels = preprocess_batch(parity_images(64, seed=1), micro_clip.preprocess)
    with torch.no_grad():
        calib = CalibrationRecord.from_scores(module(torch.from_numpy(pixels))[2].numpy())
    bundle = update_manifest(out, calibration=calib)
    data = LabelledFeatures(VisionFeatures(bundle)(pixels), np.arange(64) % 4, tuple(MICRO_CLASSES), "drawings")
    rules = {mode: fit_adhoc_rule(bundle, data, mode, subsets_per_k=20) for mode in ("learned", "zero-shot")}
    text = load_bundle(out).manifest.text
    assert text is not None
    update_manifest(out, text=text.model_copy(update={"rules": rules}))
    return out

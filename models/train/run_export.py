"""A training run directory -> a bundle (the baked prompts on the frozen vision tower).

The exported module is :class:`models.scoring_module.ScoringModule` with the run's class
embeddings and the ΔEnergy parameters of its :class:`~models.train.trainer.TrainConfig`, so the
score the bundle serves is the score the run trained for.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from models.bundle import ArchitectureInfo, Bundle
from models.clip_loading import LoadedClip, load_clip
from models.scores import ScoreParams
from models.scoring_module import ScoringModule
from models.train.export import ExportConfig, export_bundle, scoring_module_from_clip
from models.train.trainer import PROMPT_FILE, TrainConfig

__all__ = ["RunInfo", "read_run", "score_params_of", "module_from_run", "export_run"]

logger = logging.getLogger(__name__)


class RunInfo:
    """The files of a run directory, read back.

    Args:
        path: the run directory (``deltagate train --out``).
    """

    def __init__(self, path: str | Path) -> None:
        from safetensors.torch import load_file

        self.path = Path(path)
        for name in ("run.json", "train_config.json", PROMPT_FILE):
            if not (self.path / name).is_file():
                raise FileNotFoundError(f"{self.path / name} missing: not a finished training run")
        self.run: dict[str, Any] = json.loads((self.path / "run.json").read_text(encoding="utf-8"))
        self.config = TrainConfig.from_dict(json.loads((self.path / "train_config.json").read_text(encoding="utf-8")))
        self.class_embeddings = load_file(str(self.path / PROMPT_FILE))["class_embeddings"]  # (K, D)

    @property
    def classes(self) -> list[str]:
        return list(self.run["classes"])


def read_run(path: str | Path) -> RunInfo:
    """Read a run directory (see :class:`RunInfo`)."""
    return RunInfo(path)


def score_params_of(cfg: TrainConfig) -> ScoreParams:
    """The bundle's score parameters: the run's c, reset and temperature."""
    return ScoreParams(top_c=cfg.top_c, reset_logit=cfg.reset_logit, temperature=cfg.temperature)


def module_from_run(run: RunInfo, clip: LoadedClip | None = None) -> tuple[ScoringModule, LoadedClip]:
    """The scoring module of a run (CPU, float32, eval) and the CLIP it was built from.

    Args:
        run: the run.
        clip: the already loaded CLIP of the run (loaded from the run's model/pretrained otherwise).
    """
    clip = clip or load_clip(run.run["model"], run.run["pretrained"])
    clip.model.float().cpu().eval()
    module = scoring_module_from_clip(clip, run.classes, run.class_embeddings, score_params_of(run.config))
    return module, clip


def export_run(
    run_dir: str | Path,
    out: str | Path,
    *,
    name: str | None = None,
    version: str = "0.1.0",
    clip: LoadedClip | None = None,
    onnx: bool = True,
) -> Bundle:
    """Write the bundle of a training run (weights, ONNX checked against PyTorch, manifest).

    Args:
        run_dir: the run directory.
        out: bundle directory.
        name: model name (default: ``deltagate-<method>``).
        version: model version.
        clip: the run's CLIP if already loaded.
        onnx: also write ``model.onnx``.

    Returns:
        The bundle (not yet calibrated: run ``calibrate`` next).
    """
    run = read_run(run_dir)
    module, clip = module_from_run(run, clip)
    cfg = run.config
    prompt: dict[str, Any] = {"method": cfg.method, "train_config": asdict(cfg), "run": str(run.path)}
    if cfg.method != "zero-shot":
        prompt["n_ctx"] = cfg.n_ctx
    else:
        prompt["templates"] = list(cfg.templates)
    bundle = export_bundle(
        out, module, name=name or f"deltagate-{cfg.method}", version=version, classes=run.classes,
        architecture=ArchitectureInfo(model_name=clip.name, open_clip_config=clip.config, pretrained=clip.pretrained),
        preprocess=clip.preprocess, prompt=prompt, config=ExportConfig(onnx=onnx),
    )
    logger.info("exported %s run %s to %s", cfg.method, run.path, bundle.path)
    return bundle

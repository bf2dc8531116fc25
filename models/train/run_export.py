"""A training run directory -> a bundle (the baked prompts on the frozen vision tower).

The exported module is :class:`models.scoring_module.ScoringModule` with the run's class
embeddings and the score parameters given at export (selected on ID data, or METHOD.md's defaults).
They are independent of the loss parameters the run trained with (its ``TrainConfig``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from models.bundle import ArchitectureInfo, Bundle
from models.clip_loading import LoadedClip, load_clip
from models.prompts import learned_prefix
from models.quality import ValidationRecord
from models.scores import ScoreParams
from models.scoring_module import ScoringModule
from models.train.export import ExportConfig, export_bundle, scoring_module_from_clip
from models.train.text_export import export_text_side
from models.train.trainer import PROMPT_FILE, TrainConfig

__all__ = ["RunInfo", "module_from_run", "export_run"]

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
        tensors = load_file(str(self.path / PROMPT_FILE))
        self.class_embeddings = tensors["class_embeddings"]  # (K, D)
        self.ctx = tensors.get("ctx")  # (n_ctx, W) learned context (CoOp / EBM), None for zero-shot
        history = self.path / "history.json"
        self.history: list[dict[str, Any]] = (
            json.loads(history.read_text(encoding="utf-8")) if history.is_file() else [])

    @property
    def validation(self) -> ValidationRecord | None:
        """The final prompts' ID val accuracy (the last epoch's ``val_acc``); None without ID val images."""
        last = self.history[-1] if self.history else {}
        images = int(last.get("val_images") or self.run.get("data", {}).get("val_images") or 0)  # readable ones
        if not images or "val_acc" not in last:
            return None
        return ValidationRecord(accuracy=float(last["val_acc"]), images=images)

    @property
    def classes(self) -> list[str]:
        return list(self.run["classes"])


def module_from_run(run: RunInfo, clip: LoadedClip | None = None,
                    score_params: ScoreParams | None = None) -> tuple[ScoringModule, LoadedClip]:
    """The scoring module of a run (CPU, float32, eval) and the CLIP it was built from.

    Args:
        run: the run.
        clip: the already loaded CLIP of the run (loaded from the run's model/pretrained otherwise).
        score_params: the served scores' parameters (default: METHOD.md's).
    """
    clip = clip or load_clip(run.run["model"], run.run["pretrained"])
    clip.model.float().cpu().eval()
    module = scoring_module_from_clip(clip, run.classes, run.class_embeddings, score_params or ScoreParams())
    return module, clip


def export_run(
    run_dir: str | Path,
    out: str | Path,
    *,
    name: str | None = None,
    version: str = "0.1.0",
    description: str | None = None,
    clip: LoadedClip | None = None,
    onnx: bool = True,
    score_params: ScoreParams | None = None,
    selection: dict[str, Any] | None = None,
    text: bool = True,
) -> Bundle:
    """Write the bundle of a training run (weights, ONNX checked against PyTorch, manifest).

    Args:
        run_dir: the run directory.
        out: bundle directory.
        name: model name (default: ``deltagate-<method>``).
        version: model version.
        description: what the model knows, for people (``/model``, the try-it page).
        clip: the run's CLIP if already loaded.
        onnx: also write ``model.onnx``.
        score_params: the bundle's score parameters (default: METHOD.md's).
        selection: how they were selected (stored in the manifest's ``prompt`` record).
        text: with ``onnx``, also write the text side (label sets; the run's learned context inside).

    Returns:
        The bundle (not yet calibrated: run ``calibrate`` next).
    """
    run = RunInfo(run_dir)
    module, clip = module_from_run(run, clip, score_params)
    cfg = run.config
    prompt: dict[str, Any] = {"method": cfg.method, "train_config": asdict(cfg), "run": str(run.path)}
    if selection is not None:
        prompt["score_selection"] = selection
    if cfg.method != "zero-shot":
        prompt["n_ctx"] = cfg.n_ctx
    else:
        prompt["templates"] = list(cfg.templates)
    bundle = export_bundle(
        out, module, name=name or f"deltagate-{cfg.method}", version=version, classes=run.classes,
        architecture=ArchitectureInfo(model_name=clip.name, open_clip_config=clip.config, pretrained=clip.pretrained),
        preprocess=clip.preprocess, prompt=prompt, config=ExportConfig(onnx=onnx), description=description,
        validation=run.validation,
    )
    if onnx and text:
        learned = cfg.method != "zero-shot" and run.ctx is not None
        bundle = export_text_side(
            out, clip, ctx=run.ctx if learned else None,
            learned_prefix=learned_prefix(cfg.n_ctx, cfg.ctx_init) if learned else None,
            templates=list(cfg.templates), baked_mode="learned" if learned else "zero-shot",
        )
    logger.info("exported %s run %s to %s", cfg.method, run.path, bundle.path)
    return bundle

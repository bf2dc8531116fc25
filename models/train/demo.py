"""The whole offline pipeline in one call: synth -> pretrain-tiny -> (ablation) -> train -> calibrate
-> evaluate -> export. It produces the bundled default model (``bundles/default``) and the committed
results (``results/``); ``deltagate demo build`` runs it.

Stages, each reusing its output when it already exists with the same configuration (so a rerun
after an interruption continues instead of starting over):

1. ``work/world``: the synthetic world (:func:`models.train.data.synth.generate_world`);
2. ``work/tiny-clip.safetensors``: the tiny CLIP pretrained on the world's corpus;
3. ``work/ablation``: the EBM ablation, selecting ``ce_on``, λ, ``mask_ratio``, ``top_c`` on ID
   validation data only (:mod:`models.train.ablation`);
4. ``work/runs/{zero-shot,coop,ebm}``: the three methods with the same prompt learner and schedule;
5. bundles: EBM -> ``bundle_out`` (with ONNX, the shipped model), zero-shot and CoOp ->
   ``work/bundles`` (weights only; they exist to be compared);
6. calibration of every bundle on ID validation images;
7. evaluation of the three bundles on ID test, OOD and covariate sets -> ``results/evaluation.{json,md}``,
   PNG plots, and each bundle's manifest;
8. the feature-cache benchmark -> ``results/train_speed.json``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from models.clip_loading import LoadedClip, load_clip
from models.train.ablation import AblationConfig, ablation_markdown, run_ablation
from models.train.bench_cache import benchmark_feature_cache
from models.train.calibrate import calibrate_bundle
from models.train.data.folders import TaskData, few_shot
from models.train.data.splits import load_task_root
from models.train.data.synth import WorldConfig, ensure_world
from models.train.evaluate import evaluate_bundles
from models.train.plots import write_plots
from models.train.pretrain_tiny import PretrainConfig, pretrain_tiny
from models.train.report import write_evaluation
from models.train.run_export import export_run
from models.train.trainer import METHODS, PromptTrainer, TrainConfig, checkpoint_matches

__all__ = ["DemoConfig", "DEMO_CONFIGS", "build_demo"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    """Everything the demo pipeline does; saved in ``results/demo.json``."""

    world: WorldConfig = field(default_factory=WorldConfig)  # the synthetic world (synth's default)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)  # tiny-CLIP pretraining (synth's default)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(threads=1))  # base of all three methods
    ablate: bool = True  # run the ablation and train EBM with the values it selects
    ablation: AblationConfig = field(default_factory=AblationConfig)  # grid and selection rule
    bench_epochs: int = 3  # epochs per arm of the feature-cache benchmark (0: skip it)
    name: str = "deltagate-default"  # model name of the shipped bundle
    version: str = "0.1.0"  # its version


DEMO_CONFIGS: dict[str, DemoConfig] = {
    "default": DemoConfig(),
    # Minutes on 2 cores: a small world, a few pretraining steps, 2 epochs, a 2-value ablation.
    "fast": DemoConfig(
        world=WorldConfig(
            seed=3, categories=("circle", "square", "triangle", "star", "heart", "ring", "spiral", "cross"),
            id_classes=("circle", "square", "triangle", "star"), covariate_styles=("sketch",),
            far_ood=(("far_noise", ("noise",)),), n_pretrain=256, n_train_per_class=6, n_val_per_class=4,
            n_test_per_class=4, n_far_val_per_set=2, n_far_per_set=6, n_covariate_val_per_class=1,
            n_covariate_per_class=2,
        ),
        pretrain=PretrainConfig(steps=8, batch_size=32, threads=1),
        train=TrainConfig(n_ctx=4, shots=4, epochs=2, batch_size=8, threads=1),
        ablation=AblationConfig(grid=(("ebm_weight", (0.0, 1.0)),), holdout_folds=2),
        bench_epochs=1,
        version="0.0.0-fast",
    ),
}


def _world(cfg: WorldConfig, root: Path) -> Path:
    ensure_world(cfg, root, workers=2)
    return root


def _pretrained(cfg: PretrainConfig, world: Path, ckpt: Path, progress: bool) -> dict[str, Any]:
    report = ckpt.with_suffix(".json")
    want = json.loads(json.dumps(asdict(cfg)))
    if ckpt.is_file() and report.is_file():
        doc = json.loads(report.read_text(encoding="utf-8"))
        if doc.get("config") == want:
            logger.info("reusing pretrained tiny CLIP %s", ckpt)
            return dict(doc)
    return pretrain_tiny(cfg, world, ckpt, progress=progress).to_dict()


def _train(clip: LoadedClip, task: TaskData, cfg: TrainConfig, runs: Path, progress: bool) -> dict[str, Path]:
    out = {}
    for method in METHODS:
        mcfg = replace(cfg, method=method)  # type: ignore[arg-type]
        train = few_shot(task.train, mcfg.shots, mcfg.seed)
        trainer = PromptTrainer(clip, task.class_names, mcfg, runs / method, cache_dir=runs / "feature-cache")
        # Resume an interrupted run of the same configuration; a changed one starts over.
        trainer.fit(train, task.val, resume=checkpoint_matches(runs / method, mcfg), progress=progress)
        out[method] = runs / method
    clip.model.cpu()
    return out


def _ablate(clip: LoadedClip, task: TaskData, cfg: DemoConfig, work: Path, results: Path,
            command: str, progress: bool) -> TrainConfig:
    res = run_ablation(clip, task, replace(cfg.train, method="ebm"), work / "ablation", cfg.ablation,
                       progress=progress)
    (results / "ablation.json").write_text(json.dumps({"command": command, **res.to_dict()}, indent=2) + "\n",
                                           encoding="utf-8")
    (results / "ablation.md").write_text(ablation_markdown(res, command), encoding="utf-8")
    return replace(cfg.train, **res.selected)


def build_demo(
    cfg: DemoConfig, work_dir: str | Path, bundle_out: str | Path, results_dir: str | Path, *,
    command: str = "deltagate demo build", progress: bool = True,
) -> dict[str, Any]:
    """Run the whole pipeline (module docstring) and return its summary (also ``results/demo.json``).

    Args:
        cfg: the pipeline's configuration.
        work_dir: intermediate outputs (world, checkpoint, runs, comparison bundles).
        bundle_out: the shipped EBM bundle.
        results_dir: JSON, Markdown and PNG results.
        command: the command line recorded beside the results.
        progress: show progress bars.
    """
    work, results = Path(work_dir), Path(results_dir)
    results.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    t = time.perf_counter()
    world = _world(cfg.world, work / "world")
    times["synth_s"] = time.perf_counter() - t
    t = time.perf_counter()
    pre = _pretrained(cfg.pretrain, world, work / "tiny-clip.safetensors", progress)
    times["pretrain_s"] = time.perf_counter() - t
    clip = load_clip(cfg.pretrain.arch, str(work / "tiny-clip.safetensors"))
    task = load_task_root(world)
    t = time.perf_counter()
    train_cfg = _ablate(clip, task, cfg, work, results, command, progress) if cfg.ablate else cfg.train
    times["ablation_s"] = time.perf_counter() - t
    t = time.perf_counter()
    runs = _train(clip, task, train_cfg, work / "runs", progress)
    times["train_s"] = time.perf_counter() - t
    t = time.perf_counter()
    bundles = _export_and_calibrate(clip, task, runs, Path(bundle_out), work / "bundles", cfg)
    times["export_calibrate_s"] = time.perf_counter() - t
    t = time.perf_counter()
    evals = evaluate_bundles(bundles, task, cache_dir=work / "eval-cache")
    write_evaluation(results, evals, command=command, extra={"data": task.summary()})
    write_plots(results, evals)
    times["evaluate_s"] = time.perf_counter() - t
    summary: dict[str, Any] = {
        "command": command, "config": json.loads(json.dumps(asdict(cfg))), "train_config_used": asdict(train_cfg),
        "bundle": str(bundle_out), "data": task.summary(), "seconds": times,
        "pretrain": {k: pre.get(k) for k in ("train_seconds", "loss_first", "loss_last", "zero_shot")},
    }
    if cfg.bench_epochs:
        bench = benchmark_feature_cache(clip, list(task.class_names), few_shot(task.train, train_cfg.shots,
                                        train_cfg.seed), train_cfg, cfg.bench_epochs)
        (results / "train_speed.json").write_text(json.dumps({"command": command, **bench}, indent=2) + "\n",
                                                  encoding="utf-8")
        summary["train_speed"] = {k: bench[k] for k in ("cached_epoch_s", "recompute_epoch_s", "speedup_per_epoch")}
    (results / "demo.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    logger.info("demo done in %.0f s: bundle %s, results %s", sum(times.values()), bundle_out, results)
    return summary


def _export_and_calibrate(clip: LoadedClip, task: TaskData, runs: dict[str, Path], shipped: Path, others: Path,
                          cfg: DemoConfig) -> dict[str, Path]:
    """Bundles of the three runs (EBM -> the shipped path with ONNX), each calibrated on ID val."""
    assert task.val is not None, "the demo world always has an ID val split"
    bundles: dict[str, Path] = {}
    for method, run in runs.items():
        out = shipped if method == "ebm" else others / method
        name = cfg.name if method == "ebm" else f"deltagate-{method}"
        export_run(run, out, name=name, version=cfg.version, clip=clip, onnx=method == "ebm")
        calibrate_bundle(out, task.val)
        bundles[method] = out
    return bundles

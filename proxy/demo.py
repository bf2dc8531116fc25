"""The whole offline pipeline in one call: synth -> pretrain-tiny -> (ablation) -> train -> calibrate
-> evaluate -> export. It produces the bundled default model (``bundles/default``) and the committed
results (``results/``); ``deltagate demo build`` runs it.

Stages, each reusing its output when it already exists with the same configuration (so a rerun
after an interruption continues instead of starting over):

1. ``work/world``: the synthetic world (:func:`proxy.world.synth.ensure_world`);
2. ``work/tiny-clip.safetensors``: the tiny CLIP pretrained on the world's corpus;
3. ``work/selection``: selection on ID data only (protocol §5, :func:`proxy.evidence.select_arms`):
   the EBM loss search jointly with ΔEnergy's score parameters, then every score's parameters for
   every method, by held-out-class validation and the 1-SE rule -> ``results/ablation.{json,md}`` and
   ``results/selection.json``;
4. ``work/runs/{zero-shot,coop,ebm}``: the three methods with the same prompt learner and schedule
   (EBM with the selected loss parameters);
5. bundles, each with its own method's selected score parameters: EBM -> ``bundle_out`` (with ONNX,
   the shipped model), zero-shot and CoOp -> ``work/bundles`` (weights only; they exist to be compared);
6. calibration of every bundle's gate (ΔEnergy) on ID validation images; the shipped bundle's default rule
   for label sets without examples, fitted on ID val and measured on ID test -> ``label_rules.json`` of the results;
   the shipped bundle's int8 graph (``deltagate quantize`` on the world: parity and speed records), kept only when
   ``engine=auto`` would serve it (:mod:`models.graph_choice`), so that ``make serve`` gets it;
7. evaluation of the three bundles on ID test, OOD and covariate sets -> ``results/evaluation.{json,md}``,
   PNG plots, and each bundle's manifest;
8. the feature-cache benchmark -> ``results/train_speed.json``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from models.clip_loading import LoadedClip, load_clip
from models.train.bench_cache import benchmark_feature_cache
from models.train.calibrate import calibrate_bundle
from models.train.data.folders import TaskData, few_shot
from models.train.evaluate import evaluate_bundles
from models.train.features import FeatureCache
from models.train.label_rules import fit_and_measure
from models.train.plots import write_plots
from models.train.report import write_evaluation
from models.train.run_export import export_run
from models.train.selection import HOCVConfig
from models.train.trainer import METHODS, PromptTrainer, TrainConfig, checkpoint_matches
from proxy.ablation import AblationConfig, write_ablation
from proxy.evidence import ArmSelection, EvidenceConfig, run_evidence, select_arms, selection_json
from proxy.pretrain_tiny import PretrainConfig, checkpoint_seed, pretrain_tiny
from proxy.world.splits import load_task_root, random_id_splits, world_split
from proxy.world.synth import WORLD_FILE, WorldConfig, ensure_world, load_world

__all__ = ["DemoConfig", "DEMO_CONFIGS", "build_demo", "ship_int8", "evidence_splits", "build_evidence"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    """Everything the demo pipeline does; saved in ``results/demo.json``."""

    world: WorldConfig = field(default_factory=WorldConfig)  # the synthetic world (synth's default)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)  # tiny-CLIP pretraining (synth's default)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(threads=1))  # base of all three methods
    ablation: AblationConfig = field(default_factory=AblationConfig)  # loss grid, HOCV folds, accuracy guard
    evidence: EvidenceConfig = field(default_factory=EvidenceConfig)  # `demo evidence`: splits, seeds, bootstrap
    bench_epochs: int = 3  # epochs per arm of the feature-cache benchmark (0: skip it)
    name: str = "deltagate-default"  # model name of the shipped bundle
    version: str = "0.1.0"  # its version


_FAST_ABLATION = AblationConfig(grid=(("ebm_weight", (0.1, 1.0)),), hocv=HOCVConfig(folds=2, repeats=1, shots=4))
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
        ablation=_FAST_ABLATION,
        evidence=EvidenceConfig(seeds=(1, 2), n_random_splits=1, split_size=4, ablation=_FAST_ABLATION,
                                n_boot_images=50, n_boot_overall=200),
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


def _train(clip: LoadedClip, task: TaskData, cfgs: dict[str, TrainConfig], runs: Path,
           progress: bool) -> dict[str, Path]:
    out = {}
    for method in METHODS:
        mcfg = cfgs[method]
        train = few_shot(task.train, mcfg.shots, mcfg.seed)
        trainer = PromptTrainer(clip, task.class_names, mcfg, runs / method, cache_dir=runs / "feature-cache")
        # Resume an interrupted run of the same configuration; a changed one starts over.
        trainer.fit(train, task.val, resume=checkpoint_matches(runs / method, mcfg), progress=progress)
        out[method] = runs / method
    clip.model.cpu()
    return out


def _select(clip: LoadedClip, task: TaskData, cfg: DemoConfig, work: Path, results: Path,
            command: str, progress: bool) -> dict[str, ArmSelection]:
    """Protocol §5 on the demo's split: loss and score parameters of every method, on ID data only."""
    model: Any = clip.model
    cache = FeatureCache(work / "feature-cache", model.visual, {"name": clip.name, "config": clip.config},
                         clip.preprocess)
    selected, ablation = select_arms(clip, task, cfg.train, work, cfg.ablation, cache,
                                     arms=("zero-shot", "coop", "ebm"), progress=progress)
    write_ablation(results, ablation, command, pretrain_seed=cfg.pretrain.seed)
    (results / "selection.json").write_text(
        json.dumps({"command": command, "pretrain_seed": cfg.pretrain.seed,
                    **selection_json(selected, ablation)["arms"]}, indent=2) + "\n",
        encoding="utf-8")
    return selected


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
    selected = _select(clip, task, cfg, work / "selection", results, command, progress)
    times["selection_s"] = time.perf_counter() - t
    t = time.perf_counter()
    cfgs = {m: selected[m].train or replace(cfg.train, method="zero-shot") for m in METHODS}
    runs = _train(clip, task, cfgs, work / "runs", progress)
    times["train_s"] = time.perf_counter() - t
    train_cfg = cfgs["ebm"]
    t = time.perf_counter()
    bundles = _export_and_calibrate(clip, task, runs, Path(bundle_out), work / "bundles", cfg, selected, results,
                                    command)
    times["export_calibrate_s"] = time.perf_counter() - t
    t = time.perf_counter()
    int8 = ship_int8(Path(bundle_out), task)  # the world's default split: the shipped bundle's classes
    times["quantize_s"] = time.perf_counter() - t
    t = time.perf_counter()
    evals = evaluate_bundles(bundles, task, cache_dir=work / "eval-cache")
    write_evaluation(results, evals, command=command,
                     extra={"pretrain_seed": cfg.pretrain.seed, "data": task.summary()})
    write_plots(results, evals)
    times["evaluate_s"] = time.perf_counter() - t
    seed_rec = {"pretrain_seed": cfg.pretrain.seed}  # every results JSON names its backbone
    summary: dict[str, Any] = {
        "command": command, **seed_rec, "config": json.loads(json.dumps(asdict(cfg))),
        "train_config_used": asdict(train_cfg),
        "bundle": str(bundle_out), "data": task.summary(), "seconds": {**times, "total_s": sum(times.values())},
        "score_params": {m: asdict(selected[m].params) for m in METHODS},
        "pretrain": {k: pre.get(k) for k in ("train_seconds", "loss_first", "loss_last", "zero_shot")},
        "int8": int8,
    }
    if cfg.bench_epochs:
        bench = benchmark_feature_cache(clip, list(task.class_names), few_shot(task.train, train_cfg.shots,
                                        train_cfg.seed), train_cfg, cfg.bench_epochs)
        (results / "train_speed.json").write_text(
            json.dumps({"command": command, **seed_rec, **bench}, indent=2) + "\n", encoding="utf-8")
        summary["train_speed"] = {k: bench[k] for k in ("cached_epoch_s", "recompute_epoch_s", "speedup_per_epoch")}
    (results / "demo.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    logger.info("demo done in %.0f s: bundle %s, results %s", sum(times.values()), bundle_out, results)
    return summary


def ship_int8(bundle_dir: Path, data: Path | TaskData) -> dict[str, Any]:
    """Add the int8 graph to the shipped bundle, with its records on the bundle's evaluation data (a data root
    in the standard layout, or a task: the demo passes its world's), and keep it only when ``engine=auto``
    would serve it (faithful and faster); returns the verdict (``results/demo.json``)."""
    from models.bundle import INT8_ONNX_FILE, update_manifest
    from models.graph_choice import SERVES_ON, check_graph
    from models.train.quantize import QuantizeConfig, quantize_bundle

    cfg = QuantizeConfig()
    bundle = quantize_bundle(bundle_dir, cfg, data=data)
    check = check_graph(bundle, "int8", SERVES_ON["int8"])
    if check.passed:
        logger.info("shipping the int8 graph: %s", check.detail)
    else:  # auto would not serve it: it only adds megabytes
        logger.warning("not shipping the int8 graph (%s): %s", check.code, check.detail)
        (bundle_dir / INT8_ONNX_FILE).unlink()
        update_manifest(bundle_dir, int8=None)
    return {"kept": check.passed, "method": cfg.method, "op_types": cfg.resolved_op_types(), "code": check.code,
            "detail": check.detail}


def demo_description(classes: Sequence[str]) -> str:
    """What a demo bundle knows, for people (``/model``, the try-it page): only its synthetic shapes."""
    return (f"A demo model: a tiny CLIP trained from scratch on drawn synthetic shapes. It knows only these "
            f"{len(classes)} synthetic shapes: {', '.join(classes)}. Anything else (photos included) is out of its "
            "world; its gate was tested on drawn shapes, noise and textures only.")


def _export_and_calibrate(clip: LoadedClip, task: TaskData, runs: dict[str, Path], shipped: Path, others: Path,
                          cfg: DemoConfig, selected: dict[str, ArmSelection], results_dir: Path,
                          command: str) -> dict[str, Path]:
    """Bundles of the three runs (EBM -> the shipped path with ONNX), each with its own selected score
    parameters and its ΔEnergy gate calibrated on ID val."""
    assert task.val is not None, "the demo world always has an ID val split"
    bundles: dict[str, Path] = {}
    for method, run in runs.items():
        out = shipped if method == "ebm" else others / method
        name = cfg.name if method == "ebm" else f"deltagate-{method}"
        sel = selected[method].to_dict()
        export_run(run, out, name=name, version=cfg.version, clip=clip, onnx=method == "ebm",
                   description=demo_description(task.class_names),
                   score_params=selected[method].params,
                   selection={"criterion": "hocv (docs/evidence/protocol.md §5)", "scores": sel["scores"]})
        calibrate_bundle(out, task.val)
        if method == "ebm":  # the shipped bundle serves label sets: fit its default rule (docs/label-sets.md)
            assert task.test is not None
            report = fit_and_measure(out, task.val, task.test)
            (results_dir / "label_rules.json").write_text(json.dumps({"command": command, **report}, indent=2) + "\n",
                                                          encoding="utf-8")
        bundles[method] = out
    return bundles


def backbone_seed(ckpt: Path, expected: int | None = None) -> int | None:
    """The checkpoint's pretraining seed (its report's), checked against ``expected`` when one is given."""
    seed = checkpoint_seed(ckpt)
    if expected is not None and seed != expected:
        raise ValueError(f"{ckpt} was pretrained with seed {seed}, not {expected}")
    return seed


def evidence_splits(world: Path, cfg: EvidenceConfig) -> list[tuple[str, TaskData]]:
    """The pre-registered ID splits of a world (protocol §2): its default split, then the random ones."""
    wcfg = load_world(world).config
    drawn = random_id_splits(wcfg.categories, cfg.split_size, cfg.n_random_splits + 1, cfg.split_seed)
    rand = [ids for ids in drawn if set(ids) != set(wcfg.id_classes)][: cfg.n_random_splits]
    out = [("default", world_split(world).task("test"))]
    out += [(f"random-{j + 1}", world_split(world, ids).task("test")) for j, ids in enumerate(rand)]
    return out


def build_evidence(
    cfg: DemoConfig, work_dir: str | Path, results_dir: str | Path, *, command: str = "deltagate demo evidence",
    n_splits: int | None = None, n_seeds: int | None = None, budget_s: float | None = None, progress: bool = False,
    only: Sequence[str] | None = None, split_seed: int | None = None, pretrain_seed: int | None = None,
) -> dict[str, Any]:
    """``deltagate demo evidence``: the pre-registered experiment on the world and CLIP of ``demo build``.

    Args:
        cfg: the demo configuration (its ``evidence`` part; world and pretraining locate the inputs).
        work_dir: the ``demo build`` work directory (``world/``, ``tiny-clip.safetensors``).
        results_dir: where ``splits.json``, ``selection.json``, ``endpoints.json`` and ``evidence.md`` go.
        command: recorded beside the results.
        n_splits: random splits instead of the protocol's number (fewer = a partial run, reported so).
        n_seeds: seeds 1..n instead of the protocol's.
        budget_s: start no new split after this many seconds (the rest are reported "not run").
        progress: progress bars.
        only: run just these splits (e.g. one per process); finished ones are always reused.
        split_seed: the random splits' generator seed instead of the protocol's.
        pretrain_seed: the pretraining seed the checkpoint must have (its report's); results record it.

    Raises:
        FileNotFoundError: no world or checkpoint in ``work_dir``.
        ValueError: ``pretrain_seed`` differs from the checkpoint's.
    """
    work = Path(work_dir)
    ckpt = work / "tiny-clip.safetensors"
    if not (work / "world" / WORLD_FILE).is_file() or not ckpt.is_file():
        raise FileNotFoundError(f"{work}: no world or tiny CLIP; run `deltagate demo build --work {work}` first")
    ecfg = cfg.evidence
    if n_splits is not None:
        ecfg = replace(ecfg, n_random_splits=n_splits)
    if n_seeds is not None:
        ecfg = replace(ecfg, seeds=tuple(range(1, n_seeds + 1)))
    if split_seed is not None:
        ecfg = replace(ecfg, split_seed=split_seed)
    ecfg = replace(ecfg, pretrain_seed=backbone_seed(ckpt, pretrain_seed))
    clip = load_clip(cfg.pretrain.arch, str(ckpt))
    model: Any = clip.model
    cache = FeatureCache(work / "evidence" / "feature-cache", model.visual, {"name": clip.name, "config": clip.config},
                         clip.preprocess)
    deadline = time.time() + budget_s if budget_s else None
    return run_evidence(clip, evidence_splits(work / "world", ecfg), cfg.train, ecfg, work / "evidence", results_dir,
                        cache, command, progress, deadline, only)

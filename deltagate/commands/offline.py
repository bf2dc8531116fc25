"""``deltagate train | calibrate | evaluate | ablate`` and ``deltagate demo build``: the offline pipeline.

Data directories follow the layout of :class:`models.train.data.folders.TaskPaths`
(``ROOT/id/{train,val,test}/<class>/``, ``ROOT/ood/<set>/``, ``ROOT/covariate/<style>/<class>/``);
heavy modules are imported inside the functions.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from deltagate.commands.clip_options import (
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    ArchOpt,
    ModelOpt,
    PretrainedOpt,
    WeightsCacheOpt,
    load_chosen_clip,
    model_warnings,
    warn,
)
from deltagate.commands.command_line import command_line
from deltagate.commands.score_options import score_options
from deltagate.commands.task_data import id_val_index, read_task
from models.errors import DataError
from models.scoring_spec import ScoreParams  # torch-free: the score options are made from its declaration
from models.train.choices import CeOn, Method, Optimizer

if TYPE_CHECKING:
    from models.train.data.folders import TaskData
    from models.train.trainer import TrainConfig

logger = logging.getLogger(__name__)

demo_app = typer.Typer(help="The demo pipeline that builds the bundled default model.", no_args_is_help=True)

# Options shared by several commands.
DataOpt = Annotated[
    Path, typer.Option(help="Data root: ROOT/id/{train,val,test}/<class>/, ROOT/ood/, ROOT/covariate/.")
]
ClassNamesOpt = Annotated[
    Path | None, typer.Option(help="Class display names file (default ROOT/id/classnames.txt or folder names).")
]
DeviceOpt = Annotated[str, typer.Option(help="auto (CUDA when available), cpu, cuda, cuda:1, ...")]


def _report_checks(checks: list[Any]) -> None:
    """The guard's findings (:mod:`models.quality`): warnings in yellow on stderr, passes as plain lines."""
    for check in checks:
        if check.ok:
            typer.echo(f"check: {check.message}")
        else:
            warn(check.message)


def _train_config(base: dict[str, Any], **given: Any) -> TrainConfig:
    from models.train.trainer import TrainConfig

    return TrainConfig(**{**base, **{k: v for k, v in given.items() if v is not None}})


@score_options(" Exported with --bundle.")
def train(
    ctx: typer.Context,
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory (checkpoint, prompts, history).")],
    method: Annotated[Method, typer.Option(help="zero-shot (no training), coop or ebm.")] = "ebm",
    bundle: Annotated[Path | None, typer.Option(help="Also export the result as a bundle here.")] = None,
    name: Annotated[str | None, typer.Option(help="The bundle's model name (default: deltagate-METHOD).")] = None,
    version: Annotated[str, typer.Option(help="The bundle's model version.")] = "0.1.0",
    model: ModelOpt = DEFAULT_MODEL,
    pretrained: PretrainedOpt = DEFAULT_PRETRAINED,
    arch_config: ArchOpt = None,
    cache_dir: WeightsCacheOpt = None,
    class_names: ClassNamesOpt = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs [50].")] = None,
    shots: Annotated[int | None, typer.Option(min=0, help="Images per class, 0 = all [16].")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Images per step [32].")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate [0.002].")] = None,
    optimizer: Annotated[Optimizer | None, typer.Option(help="sgd or adamw [sgd].")] = None,
    n_ctx: Annotated[int | None, typer.Option(min=1, help="Context vectors [16].")] = None,
    ctx_init: Annotated[
        str | None, typer.Option(help="Initialise the context from a phrase, e.g. 'a photo of a'.")
    ] = None,
    ebm_weight: Annotated[float | None, typer.Option(help="λ of the EBM loss [1.0].")] = None,
    mask_ratio: Annotated[float | None, typer.Option(help="Masked share of dimensions [0.1].")] = None,
    loss_top_c: Annotated[int | None, typer.Option(min=1, help="ΔE_lb targets of the EBM loss [1].")] = None,
    loss_temperature: Annotated[float | None, typer.Option(help="T of the energy in the EBM loss [1].")] = None,
    ce_on: Annotated[CeOn | None, typer.Option(help="Logits of the cross-entropy: edited or original [edited].")
                     ] = None,
    augment: Annotated[bool, typer.Option(help="Random crops and flips (turns the feature cache off).")] = False,
    feature_cache: Annotated[bool, typer.Option(help="Encode training images once (without augmentation).")] = True,
    seed: Annotated[int, typer.Option(help="Seed of init, batch order, augmentation, few-shot sample.")] = 1,
    device: DeviceOpt = "auto",
    amp: Annotated[bool, typer.Option(help="float16 autocast on CUDA.")] = True,
    threads: Annotated[int | None, typer.Option(help="CPU threads while training (default: torch's).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from OUT/checkpoint.pt when present.")] = True,
    benchmark_cache: Annotated[
        int, typer.Option(help="Instead of training: time N epochs with and without the feature cache.")
    ] = 0,
    score_params: ScoreParams = ScoreParams(),
) -> None:
    """Tune CoOp prompts with cross-entropy (coop) or the EBM objective (ebm), or build zero-shot prompts."""
    import json

    from models.train.data.folders import few_shot
    from models.train.trainer import PromptTrainer, check_resume

    cfg = _train_config(
        {"method": method, "augment": augment, "cache_features": feature_cache, "seed": seed, "device": device,
         "amp": amp}, epochs=epochs, shots=shots, batch_size=batch_size, lr=lr, optimizer=optimizer, n_ctx=n_ctx,
        ctx_init=ctx_init, ebm_weight=ebm_weight, mask_ratio=mask_ratio, loss_top_c=loss_top_c,
        loss_temperature=loss_temperature, ce_on=ce_on, threads=threads,
    )
    task = read_task(data, class_names)
    if resume and not benchmark_cache:
        check_resume(out, cfg, model, pretrained)  # before the CLIP loads: a conflict is one line at once
    model_warnings(model, pretrained, data)
    clip = load_chosen_clip(model, pretrained, arch_config, cache_dir, seed)
    train_idx = few_shot(task.train, cfg.shots, cfg.seed) if method != "zero-shot" else task.train
    if benchmark_cache:
        from models.train.bench_cache import benchmark_feature_cache

        res = benchmark_feature_cache(clip, list(task.class_names), train_idx, cfg, benchmark_cache)
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_speed.json").write_text(json.dumps({"command": command_line(ctx), **res}, indent=2) + "\n")
        typer.echo(f"cached {res['cached_epoch_s']:.3f} s/epoch, recomputed {res['recompute_epoch_s']:.3f} s/epoch: "
                   f"x{res['speedup_per_epoch']:.1f}; written to {out / 'train_speed.json'}")
        return
    result = PromptTrainer(clip, task.class_names, cfg, out).fit(train_idx, task.val, resume=resume)
    last = result.history[-1] if result.history else {}
    typer.echo(f"{method}: run written to {out}; last epoch: {json.dumps(last)}")
    if bundle is not None:
        from models.train.run_export import export_run

        export_run(out, bundle, name=name, version=version, clip=clip, score_params=score_params)
        typer.echo(f"bundle written to {bundle} (calibrate it next: deltagate calibrate --bundle {bundle} ...)")
    _report_checks(_train_checks(clip.pretrained, last, len(task.val) if task.val else 0, len(task.class_names)))


def _train_checks(pretrained: str | None, last: dict[str, Any], val_images: int, num_classes: int) -> list[Any]:
    """The guard after training: the weights, and the final prompts' accuracy on ID val (if any)."""
    from models.quality import Check, accuracy_check, weights_check

    checks = [weights_check(pretrained)]
    n = int(last.get("val_images") or val_images)  # the readable ones (older runs: the folder's count)
    if "val_acc" in last and n:
        checks.append(accuracy_check(float(last["val_acc"]), n, num_classes, "validation"))
    else:
        checks.append(Check("accuracy", False, "no ID validation images (DATA/id/val/<class>/): nothing shows "
                                               "whether the model learned the classes"))
    return checks


def _share(value: float) -> float:
    if not 0.0 < value <= 1.0:
        raise typer.BadParameter(f"{value:g} is not a share of images: give a number in (0, 1], e.g. 0.95")
    return value


def calibrate(
    bundle: Annotated[Path, typer.Option(help="Bundle directory (its manifest is updated).")],
    data: Annotated[Path | None, typer.Option(help="Data root (uses ROOT/id/val).")] = None,
    val_dir: Annotated[Path | None, typer.Option(help="ID validation ImageFolder (instead of --data).")] = None,
    target_tpr: Annotated[float, typer.Option(
        callback=_share, help="Share of ID validation images that must pass, in (0, 1].")] = 0.95,
    score: Annotated[str, typer.Option(
        help="The gate: delta_energy (default), energy, max_logit, mcm or msp, with the bundle's parameters.")
    ] = "delta_energy",
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
) -> None:
    """Fit the gate's threshold (ΔEnergy by default) at the target ID TPR on ID val; write it into the bundle."""
    from models.scores import SCORE_NAMES

    if score not in SCORE_NAMES:
        raise typer.BadParameter(f"unknown score {score!r}; valid: {', '.join(SCORE_NAMES)}")
    from models.train.calibrate import calibrate_bundle
    from models.train.data.folders import scan_image_folder

    if (data is None) == (val_dir is None):
        raise typer.BadParameter("give exactly one of --data ROOT (uses ROOT/id/val) or --val-dir DIR")
    index = scan_image_folder(val_dir) if val_dir is not None else id_val_index(Path(data or "."))
    rec = calibrate_bundle(bundle, index, target_tpr=target_tpr, score=score, device=device)
    typer.echo(f"{bundle}: {rec.score} threshold {rec.threshold:.6g} (ID val pass rate {rec.achieved_tpr:.3f}, "
               f"n={rec.n}, mean {rec.mean:.4g}, std {rec.std:.4g})")


def _parse_bundles(specs: list[str]) -> dict[str, Path]:
    from models.bundle import load_bundle

    out: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            path = spec
            name = str(load_bundle(path, verify=False).manifest.prompt.get("method") or Path(path).name)
        if name in out:
            raise typer.BadParameter(f"two bundles named {name!r}; name them: --bundle NAME=PATH")
        out[name] = Path(path)
    return out


def evaluate(
    ctx: typer.Context,
    data: DataOpt,
    bundle: Annotated[list[str], typer.Option(help="Bundle to evaluate, NAME=PATH or PATH; repeat for rows.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory for evaluation.json/.md and PNG plots.")] = Path(
        "results"),
    class_names: ClassNamesOpt = None,
    write_manifest: Annotated[bool, typer.Option(help="Store each bundle's summary in its manifest.")] = True,
    plots: Annotated[bool, typer.Option(help="Write PNG plots.")] = True,
    feature_cache: Annotated[Path | None, typer.Option(help="Feature cache directory [OUT/.feature-cache].")] = None,
    ood_val: Annotated[Path | None, typer.Option(
        help="Your OOD *validation* images (a folder, flat or nested): each score's parameters are selected on "
             "ID val vs these before the test sets are scored. Never pass a test set here.")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
) -> None:
    """Every method x every score: accuracy, AUROC/FPR95/AUPR per OOD set, each score at its own threshold."""
    from models.train.evaluate import evaluate_bundles
    from models.train.plots import write_plots
    from models.train.report import write_evaluation
    from proxy.world.splits import is_world

    if not is_world(data) and not (data / "id" / "test").is_dir():  # before anything is read
        raise DataError(f"{data / 'id' / 'test'} not found: evaluate scores ID test images; put them in "
                        f"{data / 'id' / 'test'}/<class>/ (the same class folders as id/train)")
    task = read_task(data, class_names)
    if ood_val is not None and task.val is None:
        raise DataError(f"--ood-val selects against ID validation images, and {data / 'id' / 'val'} is not there")
    ood_index = None
    if ood_val is not None:
        from models.train.data.folders import scan_unlabelled

        ood_index = scan_unlabelled(ood_val)
    evals = evaluate_bundles(_parse_bundles(bundle), task, cache_dir=feature_cache or out / ".feature-cache",
                             device=device, write_manifest=write_manifest, ood_val=ood_index)
    jpath, mpath = write_evaluation(out, evals, command=command_line(ctx), extra={"data": task.summary()})
    if plots:
        write_plots(out, evals)
    typer.echo(mpath.read_text(encoding="utf-8"))
    typer.echo(f"written: {jpath}, {mpath}" + (f", plots in {out}" if plots else ""))
    _report_evaluation_checks(evals, task)


def _report_evaluation_checks(evals: dict[str, Any], task: TaskData) -> None:
    """The guard on every evaluated bundle: ID test accuracy and whether its gate separates any OOD set."""
    from models.quality import Check, evaluation_checks

    for method, ev in evals.items():
        checks = evaluation_checks(ev.summary, len(task.class_names), ev.threshold_score)
        if not task.ood:
            checks.append(Check("gate", False, "no OOD images (DATA/ood/<set>/): nothing shows whether the gate "
                                               "separates anything; add images of what is none of your classes"))
        typer.echo(f"{method}:")
        _report_checks(checks)


def ablate(
    ctx: typer.Context,
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", "-o", help="Work directory of the ablation runs.")],
    results: Annotated[Path, typer.Option(help="Where ablation.json/.md go.")] = Path("results"),
    model: ModelOpt = DEFAULT_MODEL,
    pretrained: PretrainedOpt = DEFAULT_PRETRAINED,
    arch_config: ArchOpt = None,
    cache_dir: WeightsCacheOpt = None,
    class_names: ClassNamesOpt = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs per run [50].")] = None,
    shots: Annotated[int | None, typer.Option(min=0, help="Images per class [16].")] = None,
    folds: Annotated[int, typer.Option(help="Class folds of held-out-class validation.")] = 4,
    repeats: Annotated[int, typer.Option(help="Independent class partitions of held-out-class validation.")] = 2,
    seed: Annotated[int, typer.Option(help="Seed.")] = 1,
    device: DeviceOpt = "auto",
    threads: Annotated[int | None, typer.Option(help="CPU threads while training.")] = 1,
) -> None:
    """EBM loss search (λ, ce_on, mask_ratio, loss T) jointly with ΔEnergy's parameters; ID data only."""
    from models.train.selection import HOCVConfig
    from proxy.ablation import AblationConfig, ablation_markdown, run_ablation, write_ablation

    cfg = _train_config({"method": "ebm", "seed": seed, "device": device}, epochs=epochs, shots=shots, threads=threads)
    task = read_task(data, class_names)
    model_warnings(model, pretrained, data)
    clip = load_chosen_clip(model, pretrained, arch_config, cache_dir, seed)
    acfg = AblationConfig(hocv=HOCVConfig(folds=folds, repeats=repeats, shots=cfg.shots))
    res = run_ablation(clip, task, cfg, out, acfg)
    command = command_line(ctx)
    write_ablation(results, res, command)
    typer.echo(ablation_markdown(res, command))


def _demo_config(preset: str, seed: int | None, id_classes: str | None) -> Any:
    from dataclasses import replace

    from proxy.demo import DEMO_CONFIGS

    if preset not in DEMO_CONFIGS:
        raise typer.BadParameter(f"unknown preset {preset!r}; valid: {', '.join(DEMO_CONFIGS)}")
    cfg = DEMO_CONFIGS[preset]
    changes: dict[str, Any] = {}
    if seed is not None:
        changes["seed"] = seed
    if id_classes is not None:
        changes["id_classes"] = tuple(c.strip() for c in id_classes.split(",") if c.strip())
    try:
        return replace(cfg, world=replace(cfg.world, **changes)) if changes else cfg
    except ValueError as exc:  # unknown class names, fewer than two classes
        raise typer.BadParameter(str(exc)) from exc


PUBLISHED_BUNDLE, PUBLISHED_RESULTS = Path("bundles/default"), Path("results")  # tracked: `demo build --publish`
WorldSeedOpt = Annotated[int | None, typer.Option("--seed", help="World seed (default: the preset's).")]
IdClassesOpt = Annotated[str | None, typer.Option(help="ID classes of the world, 'a,b,c' (default: the preset's).")]


@demo_app.command("build")
def demo_build(
    ctx: typer.Context,
    preset: Annotated[str, typer.Option(help="default (the shipped model) or fast (minutes; tests).")] = "default",
    seed: WorldSeedOpt = None,
    id_classes: IdClassesOpt = None,
    work: Annotated[Path, typer.Option(help="Intermediate outputs (world, checkpoint, runs).")] = Path("runs/demo"),
    bundle: Annotated[Path | None, typer.Option(help="Where the EBM bundle goes (default: WORK/bundle).")] = None,
    results: Annotated[Path | None, typer.Option(
        help="Where JSON/Markdown/PNG results go (default: WORK/results).")] = None,
    publish: Annotated[bool, typer.Option(
        help=f"Write the bundled default model and the committed results instead ({PUBLISHED_BUNDLE}/, "
             f"{PUBLISHED_RESULTS}/): tracked files change.")] = False,
    progress: Annotated[bool, typer.Option(help="Progress bars.")] = True,
) -> None:
    """synth -> pretrain-tiny -> selection (ID val) -> train zero-shot/CoOp/EBM -> export -> calibrate -> evaluate.

    Everything goes under --work unless --publish (make demo PUBLISH=1) replaces the bundled default model.
    """
    from proxy.demo import build_demo

    if publish and (bundle is not None or results is not None):
        raise typer.BadParameter(f"--publish writes {PUBLISHED_BUNDLE} and {PUBLISHED_RESULTS}; "
                                 "drop --bundle/--results, or drop --publish")
    bundle = PUBLISHED_BUNDLE if publish else bundle or work / "bundle"
    results = PUBLISHED_RESULTS if publish else results or work / "results"
    cfg = _demo_config(preset, seed, id_classes)
    summary = build_demo(cfg, work, bundle, results, command=command_line(ctx), progress=progress)
    typer.echo((results / "evaluation.md").read_text(encoding="utf-8"))
    typer.echo(f"bundle: {bundle}; results: {results}; stage seconds: {summary['seconds']}")


@demo_app.command("evidence")
def demo_evidence(
    ctx: typer.Context,
    preset: Annotated[str, typer.Option(help="default or fast; the world and CLIP of `demo build`.")] = "default",
    seed: WorldSeedOpt = None,
    id_classes: IdClassesOpt = None,
    work: Annotated[Path, typer.Option(help="The `demo build` work directory (world, checkpoint).")] = Path(
        "runs/demo"),
    results: Annotated[Path, typer.Option(help="Where the evidence tables go.")] = Path("results/evidence"),
    splits: Annotated[int | None, typer.Option(help="Random ID splits besides the default (protocol: 4).")] = None,
    seeds: Annotated[int | None, typer.Option(help="Prompt-tuning seeds per arm (protocol: 10).")] = None,
    budget_min: Annotated[float | None, typer.Option(help="Start no new split after this many minutes.")] = None,
    only: Annotated[str | None, typer.Option(help="Run only these splits ('default,random-1'); others are reused "
                                                  "when finished (run several processes, then one without --only).")
                    ] = None,
    progress: Annotated[bool, typer.Option(help="Progress bars.")] = False,
) -> None:
    """The pre-registered experiment (docs/evidence/protocol.md): every split, arm and seed, with CIs and verdicts."""
    from proxy.demo import build_evidence

    cfg = _demo_config(preset, seed, id_classes)
    doc = build_evidence(cfg, work, results, command=command_line(ctx), n_splits=splits, n_seeds=seeds,
                         budget_s=budget_min * 60 if budget_min else None, progress=progress,
                         only=[x.strip() for x in only.split(",")] if only else None)
    typer.echo((results / "evidence.md").read_text(encoding="utf-8"))
    typer.echo(f"verdicts: {[(v['claim'], v['verdict']) for v in doc['verdicts']]}; not run: {doc['not_run']}")

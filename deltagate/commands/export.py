"""``deltagate export``: any open_clip CLIP plus class names -> a bundle (weights + ONNX + manifest)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

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
)
from deltagate.commands.score_options import score_options
from models.scoring_spec import ScoreParams  # torch-free: the score options are made from its declaration


def read_classes(spec: str) -> list[str]:
    """Class names from a file (one per line, as :func:`models.train.data.folders.read_class_names` reads
    it) or a comma-separated list."""
    p = Path(spec)
    if p.is_file():
        from models.train.data.folders import read_class_names  # lazy: keeps `deltagate --help` light

        names = read_class_names(p)
    else:
        names = [c.strip() for c in spec.split(",")]
    names = [n for n in names if n]
    if len(names) < 2:
        raise typer.BadParameter(f"need at least two class names, got {names!r}")
    return names


@score_options()
def export(
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle directory to write.")],
    classes: Annotated[str, typer.Option(help="Class names: a file (one per line) or 'a,b,c'.")],
    model: ModelOpt = DEFAULT_MODEL,
    pretrained: PretrainedOpt = DEFAULT_PRETRAINED,
    arch_config: ArchOpt = None,
    cache_dir: WeightsCacheOpt = None,
    template: Annotated[list[str] | None, typer.Option(help="Zero-shot prompt template(s) with '{}'.")] = None,
    name: Annotated[str | None, typer.Option(help="Model name in the manifest (default: the directory name).")] = None,
    version: Annotated[str, typer.Option(help="Model version in the manifest.")] = "0.1.0",
    onnx: Annotated[bool, typer.Option(help="Also export and check model.onnx.")] = True,
    text: Annotated[bool, typer.Option(help="With ONNX: also the text side (text.onnx, scores.onnx, tokenizer.json) "
                                            "for label sets at request time.")] = True,
    seed: Annotated[int, typer.Option(help="Seed for random initialisation.")] = 0,
    quantize: Annotated[
        list[str] | None,
        typer.Option(help="Also write a reduced-precision graph of model.onnx: int8 or fp16 (repeat for both)."),
    ] = None,
    quantize_method: QuantizeMethodOpt = "dynamic",
    data: DataOpt = None,
    score_params: ScoreParams = ScoreParams(),
) -> None:
    """Export a zero-shot bundle: a CLIP and class names -> weights, ONNX (parity-checked) and manifest."""
    from models.bundle import ArchitectureInfo
    from models.prompt_learner import DEFAULT_TEMPLATES
    from models.train.export import ExportConfig, export_bundle, scoring_module_from_clip

    names = read_classes(classes)
    precisions = list(dict.fromkeys(quantize or []))  # each once, in the order given
    _check_quantize(precisions, onnx, quantize_method)
    model_warnings(model, pretrained)
    loaded = load_chosen_clip(model, pretrained, arch_config, cache_dir, seed)
    templates = tuple(template) if template else DEFAULT_TEMPLATES
    module = scoring_module_from_clip(loaded, names, score_params=score_params, templates=templates)
    bundle = export_bundle(
        out, module, name=name or out.name, version=version, classes=names, preprocess=loaded.preprocess,
        architecture=ArchitectureInfo(model_name=model, open_clip_config=loaded.config, pretrained=loaded.pretrained),
        prompt={"method": "zero-shot", "templates": list(templates)}, config=ExportConfig(onnx=onnx),
    )
    if onnx and text:
        from models.train.text_export import export_text_side

        bundle = export_text_side(out, loaded, templates=templates, baked_mode="zero-shot")
    files = ", ".join(f"{k} ({v.size / 1e6:.1f} MB)" for k, v in bundle.manifest.files.items())
    typer.echo(f"wrote bundle {bundle.path}: {len(names)} classes; {files}")
    if bundle.manifest.onnx is not None:
        worst = max(bundle.manifest.onnx.parity_max_abs_diff.values())
        typer.echo(f"ONNX parity: max |onnx - torch| = {worst:.2g} (atol {bundle.manifest.onnx.parity_atol})")
    for precision in precisions:
        _quantize(out, precision, quantize_method, data)


QuantizeMethodOpt = Annotated[
    str, typer.Option(help="int8 method: dynamic (weights only) or static (activations too, ranges from ID val).")
]
DataOpt = Annotated[
    Path | None,
    typer.Option(help="Evaluation data root (ROOT/id/{val,test}, ROOT/ood/*): parity on it, int8 threshold on ID val."),
]
QUANTIZE_METHODS = ("dynamic", "static")
PRECISIONS = ("int8", "fp16")  # model.int8.onnx (engine onnx-int8), model.fp16.onnx (engine onnx-fp16)


def _check_quantize(precisions: list[str], onnx: bool, method: str) -> None:
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise typer.BadParameter(f"--quantize {bad[0]!r}: choose {' or '.join(PRECISIONS)}")
    if precisions and not onnx:
        raise typer.BadParameter(f"--quantize {precisions[0]} converts model.onnx: drop --no-onnx")
    if method not in QUANTIZE_METHODS:
        raise typer.BadParameter(f"--quantize-method {method!r}: choose {' or '.join(QUANTIZE_METHODS)}")


def _quantize(bundle_dir: Path, precision: str, method: str, data: Path | None, report: Path | None = None,
              ctx: typer.Context | None = None, op_types: str = "default") -> None:
    import json

    from deltagate.commands.command_line import command_line
    from deltagate.commands.task_data import eval_data
    from models.bundle import load_bundle

    data_or_task = eval_data(data, load_bundle(bundle_dir, verify=False).manifest.classes)
    info: Any
    if precision == "int8":
        from models.train.quantize import QuantizeConfig, quantize_bundle

        ops: Any = {"default": "default", "all": None}.get(op_types, tuple(o.strip() for o in op_types.split(",")))
        bundle = quantize_bundle(bundle_dir, QuantizeConfig(method=method, op_types=ops), data=data_or_task)  # type: ignore[arg-type]
        info = bundle.manifest.int8
    else:
        from models.train.float16 import float16_bundle

        bundle = float16_bundle(bundle_dir, data=data_or_task)
        info = bundle.manifest.fp16
    assert info is not None
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        doc = {"command": command_line(ctx) if ctx else None, "bundle": bundle.manifest.name,
               precision: info.model_dump(mode="json", exclude={"calibration": {"quantile_levels", "quantile_values"}})}
        report.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    _echo_parity(precision, info, bundle.manifest.files[info.file].size / 1e6)
    _echo_auto(bundle, precision)


def _echo_auto(bundle: Any, precision: str) -> None:
    """Whether ``engine=auto`` serves the new graph (on the provider it is served on), and why."""
    from models.graph_choice import SERVES_ON, check_graph

    check = check_graph(bundle, precision, SERVES_ON[precision])
    typer.echo(f"engine=auto {'serves' if check.passed else 'does not serve'} it ({check.code}): {check.detail}")


def _echo_parity(precision: str, info: Any, size_mb: float) -> None:
    """The parity record of an int8 or fp16 graph (:class:`models.bundle.GraphParity`), as a few lines."""
    p = info.parity
    how = f", {info.method}" if precision == "int8" else ""
    typer.echo(f"{precision} graph {info.file} ({size_mb:.1f} MB{how}): label agreement {p.label_agreement:.4f}, "
               f"max |ΔEnergy diff| {p.max_abs_delta_energy_diff:.3g} on {p.images} images ({p.data}, {p.provider})")
    if p.id_accuracy:
        typer.echo(f"  ID accuracy {p.id_accuracy['fp32']:.4f} -> {p.id_accuracy[precision]:.4f}")
    for name, auroc in p.ood_auroc.items():
        typer.echo(f"  AUROC {name}: {auroc['fp32']:.4f} -> {auroc[precision]:.4f}")
    if p.gate_flips is not None:
        typer.echo(f"  gate decisions that differ: {p.gate_flips} of {p.images} (thresholds {p.thresholds})")
    if p.accepted_label_agreement is not None:
        typer.echo(f"  labels of the {p.accepted_images} images both graphs accept agree: "
                   f"{p.accepted_label_agreement:.4f}")
    if info.speed is not None:
        speeds = ", ".join(f"{v:.2f}x at batch {b}" for b, v in info.speed.speedup.items())
        typer.echo(f"  speed against float32 ({info.speed.clock}): {speeds}")
    if precision == "fp16":
        refit = "" if info.refit_threshold is None else f"; refitted on its ID val: {info.refit_threshold:.6g}"
        typer.echo(f"  fp16 keeps the float32 threshold{refit} (DELTAGATE_ENGINE=onnx-fp16)")
    elif info.calibration is None:
        typer.echo("  no int8 threshold (give --data with ID val images): onnx-int8 cannot serve this bundle yet")
    else:
        typer.echo(f"  int8 threshold {info.calibration.threshold:.6g} on {info.calibration.split} "
                   f"(n={info.calibration.n})")


def quantize(
    ctx: typer.Context,
    bundle: Annotated[Path, typer.Option(help="Bundle directory with model.onnx (its manifest is updated).")],
    data: DataOpt = None,
    precision: Annotated[
        str, typer.Option(help="int8 (model.int8.onnx, its own threshold) or fp16 (model.fp16.onnx, for CUDA).")
    ] = "int8",
    method: QuantizeMethodOpt = "dynamic",
    report: Annotated[Path | None, typer.Option(help="Also write the parity record as JSON here.")] = None,
    op_types: Annotated[
        str, typer.Option(help="int8: node types to quantize, e.g. MatMul,Gemm; 'all' = every type ONNX Runtime "
                          "quantizes; 'default' = dynamic: MatMul,Gemm, static: all.")
    ] = "default",
) -> None:
    """Add an int8 or float16 graph to an existing bundle, with its parity and speed records against model.onnx,
    and say whether engine=auto serves it."""
    _check_quantize([precision], True, method)
    _quantize(bundle, precision, method, data, report, ctx, op_types)

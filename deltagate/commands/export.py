"""``deltagate export``: any open_clip CLIP plus class names -> a bundle (weights + ONNX + manifest)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def read_classes(spec: str) -> list[str]:
    """Class names from a file (one per line) or a comma-separated list."""
    p = Path(spec)
    if p.is_file():
        names = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
    else:
        names = [c.strip() for c in spec.split(",")]
    names = [n for n in names if n]
    if len(names) < 2:
        raise typer.BadParameter(f"need at least two class names, got {names!r}")
    return names


def export(
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle directory to write.")],
    classes: Annotated[str, typer.Option(help="Class names: a file (one per line) or 'a,b,c'.")],
    model: Annotated[str, typer.Option(help="open_clip architecture, e.g. ViT-B-32 or tiny-clip.")] = "ViT-B-32",
    pretrained: Annotated[
        str, typer.Option(help="Pretrained tag (openai), local checkpoint path, or 'none' (random weights).")
    ] = "none",
    arch_config: Annotated[
        Path | None, typer.Option(help="Register an open_clip JSON config first (custom architectures).")
    ] = None,
    cache_dir: Annotated[Path | None, typer.Option(help="Weights cache directory.")] = None,
    template: Annotated[list[str] | None, typer.Option(help="Zero-shot prompt template(s) with '{}'.")] = None,
    name: Annotated[str | None, typer.Option(help="Model name in the manifest (default: the directory name).")] = None,
    version: Annotated[str, typer.Option(help="Model version in the manifest.")] = "0.1.0",
    top_c: Annotated[int, typer.Option(help="ΔEnergy: number of top logits reset.")] = 1,
    reset_logit: Annotated[float, typer.Option(help="ΔEnergy: value a removed logit is reset to.")] = 0.0,
    temperature: Annotated[float, typer.Option(help="Energy temperature T.")] = 1.0,
    onnx: Annotated[bool, typer.Option(help="Also export and check model.onnx.")] = True,
    seed: Annotated[int, typer.Option(help="Seed for random initialisation.")] = 0,
    quantize: Annotated[str | None, typer.Option(help="Also write an int8 graph: 'int8' (needs --onnx).")] = None,
    quantize_method: QuantizeMethodOpt = "dynamic",
    data: DataOpt = None,
) -> None:
    """Export a zero-shot bundle: a CLIP and class names -> weights, ONNX (parity-checked) and manifest."""
    import torch

    from models.bundle import ArchitectureInfo
    from models.clip_loading import load_clip, register_architecture
    from models.prompt_learner import DEFAULT_TEMPLATES
    from models.scores import ScoreParams
    from models.train.export import ExportConfig, export_bundle, scoring_module_from_clip

    names = read_classes(classes)
    _check_quantize(quantize, onnx, quantize_method)
    if arch_config is not None:
        register_architecture(arch_config)
    torch.manual_seed(seed)
    loaded = load_clip(model, pretrained, cache_dir=str(cache_dir) if cache_dir else None)
    templates = tuple(template) if template else DEFAULT_TEMPLATES
    params = ScoreParams(top_c=top_c, reset_logit=reset_logit, temperature=temperature)
    module = scoring_module_from_clip(loaded, names, score_params=params, templates=templates)
    bundle = export_bundle(
        out, module, name=name or out.name, version=version, classes=names, preprocess=loaded.preprocess,
        architecture=ArchitectureInfo(model_name=model, open_clip_config=loaded.config, pretrained=loaded.pretrained),
        prompt={"method": "zero-shot", "templates": list(templates)}, config=ExportConfig(onnx=onnx),
    )
    files = ", ".join(f"{k} ({v.size / 1e6:.1f} MB)" for k, v in bundle.manifest.files.items())
    typer.echo(f"wrote bundle {bundle.path}: {len(names)} classes; {files}")
    if bundle.manifest.onnx is not None:
        worst = max(bundle.manifest.onnx.parity_max_abs_diff.values())
        typer.echo(f"ONNX parity: max |onnx - torch| = {worst:.2g} (atol {bundle.manifest.onnx.parity_atol})")
    if quantize:
        _quantize(out, quantize_method, data)


QuantizeMethodOpt = Annotated[
    str, typer.Option(help="int8 method: dynamic (weights only) or static (activations too, ranges from ID val).")
]
DataOpt = Annotated[
    Path | None,
    typer.Option(help="Evaluation data root (ROOT/id/{val,test}, ROOT/ood/*): int8 parity and threshold."),
]
QUANTIZE_METHODS = ("dynamic", "static")


def _check_quantize(quantize: str | None, onnx: bool, method: str) -> None:
    if quantize is not None and quantize != "int8":
        raise typer.BadParameter(f"--quantize {quantize!r}: the only choice is int8")
    if quantize and not onnx:
        raise typer.BadParameter("--quantize int8 quantizes model.onnx: drop --no-onnx")
    if method not in QUANTIZE_METHODS:
        raise typer.BadParameter(f"--quantize-method {method!r}: choose {' or '.join(QUANTIZE_METHODS)}")


def _quantize(bundle_dir: Path, method: str, data: Path | None, report: Path | None = None,
              ctx: typer.Context | None = None) -> None:
    import json

    from deltagate.commands.command_line import command_line
    from models.train.quantize import QuantizeConfig, quantize_bundle

    bundle = quantize_bundle(bundle_dir, QuantizeConfig(method=method), data=data)  # type: ignore[arg-type]
    info = bundle.manifest.int8
    assert info is not None
    if report is not None:
        report.parent.mkdir(parents=True, exist_ok=True)
        doc = {"command": command_line(ctx) if ctx else None, "bundle": bundle.manifest.name,
               "int8": info.model_dump(mode="json", exclude={"calibration": {"quantile_levels", "quantile_values"}})}
        report.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    p = info.parity
    size = bundle.manifest.files[info.file].size / 1e6
    typer.echo(f"int8 graph {info.file} ({size:.1f} MB, {info.method}): label agreement {p.label_agreement:.4f}, "
               f"max |ΔEnergy diff| {p.max_abs_delta_energy_diff:.3g} on {p.images} images ({p.data})")
    if p.id_accuracy_fp32 is not None:
        typer.echo(f"  ID accuracy {p.id_accuracy_fp32:.4f} -> {p.id_accuracy_int8:.4f}")
    for name, auroc in p.ood_auroc.items():
        typer.echo(f"  AUROC {name}: {auroc['fp32']:.4f} -> {auroc['int8']:.4f}")
    if info.calibration is None:
        typer.echo("  no int8 threshold (give --data with ID val images): onnx-int8 cannot serve this bundle yet")
    else:
        typer.echo(f"  int8 threshold {info.calibration.threshold:.6g} on {info.calibration.split} "
                   f"(n={info.calibration.n})")


def quantize(
    ctx: typer.Context,
    bundle: Annotated[Path, typer.Option(help="Bundle directory with model.onnx (its manifest is updated).")],
    data: DataOpt = None,
    method: QuantizeMethodOpt = "dynamic",
    report: Annotated[Path | None, typer.Option(help="Also write the parity record as JSON here.")] = None,
) -> None:
    """Add an int8 graph (model.int8.onnx) to an existing bundle, with its parity record and threshold."""
    _check_quantize("int8", True, method)
    _quantize(bundle, method, data, report, ctx)

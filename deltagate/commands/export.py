"""``deltagate export``: any open_clip CLIP plus class names -> a bundle (weights + ONNX + manifest)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


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
) -> None:
    """Export a zero-shot bundle: a CLIP and class names -> weights, ONNX (parity-checked) and manifest."""
    import torch

    from models.bundle import ArchitectureInfo
    from models.clip_loading import load_clip, register_architecture
    from models.prompt_learner import DEFAULT_TEMPLATES
    from models.scores import ScoreParams
    from models.train.export import ExportConfig, export_bundle, scoring_module_from_clip

    names = read_classes(classes)
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

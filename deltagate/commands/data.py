"""``deltagate data synth`` and ``deltagate pretrain-tiny``: the synthetic world and its tiny CLIP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

data_app = typer.Typer(help="Datasets: generate the synthetic image-caption world.", no_args_is_help=True)


def _csv(value: str | None) -> tuple[str, ...] | None:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else None


@data_app.command("synth")
def synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Directory to write the world into.")],
    seed: Annotated[int, typer.Option(help="Master seed: the same seed gives the same files.")] = 0,
    preset: Annotated[str, typer.Option(help="Named configuration: default or small (tests).")] = "default",
    id_classes: Annotated[
        str | None, typer.Option(help="Comma-separated ID categories (the rest are near OOD).")
    ] = None,
    covariate_styles: Annotated[
        str | None, typer.Option(help="Comma-separated rendering styles held out as covariate shift.")
    ] = None,
    n_pretrain: Annotated[int | None, typer.Option(help="Images in the pretraining corpus.")] = None,
    workers: Annotated[int, typer.Option(help="Rendering processes.")] = 2,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing world in --out.")] = False,
) -> None:
    """Render the synthetic world: pretraining corpus, ID task, near/far OOD and covariate-shift sets."""
    from models.train.data.synth import PRESETS, generate_world, with_overrides

    if preset not in PRESETS:
        raise typer.BadParameter(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    cfg = with_overrides(
        PRESETS[preset], seed=seed, id_classes=_csv(id_classes), covariate_styles=_csv(covariate_styles),
        n_pretrain=n_pretrain,
    )
    manifest = generate_world(cfg, out, workers=workers, overwrite=overwrite)
    typer.echo(f"world written to {out} in {manifest.seconds:.1f} s: {json.dumps(manifest.counts)}")


def pretrain_tiny(
    world: Annotated[Path, typer.Option(help="A world from `deltagate data synth`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint path (.safetensors); report beside it.")],
    steps: Annotated[int | None, typer.Option(help="Optimiser steps.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Image-caption pairs per step.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of initialisation and batch order.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda.")] = None,
    evaluate: Annotated[bool, typer.Option(help="Zero-shot evaluation on the world's ID task after training.")] = True,
) -> None:
    """Train the tiny CLIP (models/archs/tiny-clip.json) contrastively on a world's captioned corpus."""
    from dataclasses import replace

    from models.train.pretrain_tiny import PretrainConfig, pretrain_tiny

    given = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "device": device}
    cfg = replace(PretrainConfig(), **{k: v for k, v in given.items() if v is not None})
    report = pretrain_tiny(cfg, world, out, evaluate=evaluate)
    typer.echo(f"checkpoint {report.checkpoint} ({report.checkpoint_bytes / 1e6:.1f} MB); "
               f"loss {report.loss_first:.3f} -> {report.loss_last:.3f} in {report.train_seconds:.0f} s")
    if report.zero_shot:
        typer.echo(json.dumps(report.zero_shot, indent=2))

"""``deltagate data synth`` and ``deltagate pretrain-tiny``: the synthetic world and its tiny CLIP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

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
    caption_class_frac: Annotated[
        float | None, typer.Option(help="Share of pretraining object captions naming only the objects.")
    ] = None,
    style_leads: Annotated[
        bool | None, typer.Option("--style-leads/--no-style-leads", help="Class-only captions lead with their style.")
    ] = None,
    workers: Annotated[int, typer.Option(help="Rendering processes.")] = 2,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing world in --out.")] = False,
) -> None:
    """Render the synthetic world: pretraining corpus, every category's train/val/test, far OOD, covariate shift.

    --id-classes only sets the world's default ID split: no file depends on it (`deltagate data split`).
    """
    from proxy.world.synth import PRESETS, generate_world, with_overrides

    if preset not in PRESETS:
        raise typer.BadParameter(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    cfg = with_overrides(
        PRESETS[preset], seed=seed, id_classes=_csv(id_classes), covariate_styles=_csv(covariate_styles),
        n_pretrain=n_pretrain, caption_class_frac=caption_class_frac, caption_style_leads=style_leads,
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
    threads: Annotated[int | None, typer.Option(help="torch intra-op CPU threads.")] = None,
    captions: Annotated[
        Path | None, typer.Option(help="Another caption file (JSONL/CSV) to train on instead of the world's.")
    ] = None,
    evaluate: Annotated[
        bool, typer.Option(help="Zero-shot evaluation after training (a world's val splits; never its test splits).")
    ] = True,
) -> None:
    """Train the demo's synthetic-shapes CLIP (tiny-clip) contrastively on a world's captioned corpus."""
    from dataclasses import replace

    from proxy.pretrain_tiny import PretrainConfig, pretrain_tiny

    given: dict[str, Any] = {
        "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "device": device, "threads": threads,
    }
    cfg = replace(PretrainConfig(), **{k: v for k, v in given.items() if v is not None})
    report = pretrain_tiny(cfg, world, out, captions=captions, evaluate=evaluate)
    typer.echo(f"checkpoint {report.checkpoint} ({report.checkpoint_bytes / 1e6:.1f} MB); "
               f"loss {report.loss_first:.3f} -> {report.loss_last:.3f} in {report.train_seconds:.0f} s")
    if report.zero_shot:
        typer.echo(json.dumps(report.zero_shot, indent=2))


@data_app.command("split")
def split(
    world: Annotated[Path, typer.Option(help="A world from `deltagate data synth`.")],
    id_classes: Annotated[
        str | None, typer.Option(help="Comma-separated ID categories (default: the world's).")
    ] = None,
) -> None:
    """Print one ID split of a world as JSON: image counts of every index, near and look-alike categories."""
    from proxy.world.splits import world_split

    s = world_split(world, _csv(id_classes))
    doc = {
        "id_classes": list(s.id_classes),
        "hard_near": list(s.hard_near),
        "counts": {
            "train": len(s.train), "val": len(s.val), "test": len(s.test),
            **{f"near_val/{k}": len(v) for k, v in s.near_val.items()},
            **{f"near_test/{k}": len(v) for k, v in s.near_test.items()},
            **{f"far_val/{k}": len(v) for k, v in s.far_val.items()},
            **{f"far_test/{k}": len(v) for k, v in s.far_test.items()},
            **{f"covariate_val/{k}": len(v) for k, v in s.covariate_val.items()},
            **{f"covariate_test/{k}": len(v) for k, v in s.covariate_test.items()},
        },
    }
    typer.echo(json.dumps(doc, indent=2))


@data_app.command("random-splits")
def random_splits(
    world: Annotated[Path, typer.Option(help="A world from `deltagate data synth`.")],
    n_classes: Annotated[int, typer.Option(help="ID classes per split.")] = 8,
    n_splits: Annotated[int, typer.Option(help="How many splits.")] = 5,
    seed: Annotated[int, typer.Option(help="Seed of the draw (pre-register it).")] = 0,
) -> None:
    """Print pre-registered random ID splits of a world's categories, one comma-separated line each."""
    from proxy.world.splits import random_id_splits
    from proxy.world.synth import load_world

    for s in random_id_splits(load_world(world).config.categories, n_classes, n_splits, seed):
        typer.echo(",".join(s))


@data_app.command("faithfulness")
def faithfulness(
    ctx: typer.Context,
    world: Annotated[Path, typer.Option(help="A world from `deltagate data synth`.")],
    model: Annotated[
        list[str], typer.Option(help="LABEL=CHECKPOINT of a tiny CLIP pretrained on the world (repeatable).")
    ],
    arch: Annotated[str, typer.Option(help="open_clip architecture of the checkpoints.")] = "tiny-clip",
    n_splits: Annotated[int, typer.Option(help="Random ID splits to check the orderings on.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the random ID splits.")] = 0,
    split: Annotated[
        list[str] | None, typer.Option(help="NAME=a,b,c: a further ID split to report (repeatable).")
    ] = None,
    json_out: Annotated[Path, typer.Option(help="JSON report.")] = Path("results/faithfulness.json"),
    md_out: Annotated[Path, typer.Option(help="Markdown table.")] = Path("docs/evidence/faithfulness.md"),
) -> None:
    """Which known facts of real CLIP the proxy reproduces (validation images only): JSON + Markdown."""

    from models.clip_loading import load_clip
    from proxy.faithfulness import check_faithfulness, write_faithfulness

    named: dict[str, list[str]] = {}
    for spec in split or []:
        name, sep, classes = spec.partition("=")
        if not sep or not _csv(classes):
            raise typer.BadParameter(f"--split takes NAME=a,b,c, got {spec!r}")
        named[name] = list(_csv(classes) or ())
    reports = []
    for spec in model:
        label, sep, path = spec.partition("=")
        if not sep or not path:
            raise typer.BadParameter(f"--model takes LABEL=CHECKPOINT, got {spec!r}")
        clip = load_clip(arch, path)
        reports.append(check_faithfulness(clip, world, label=label, checkpoint=path, n_splits=n_splits, seed=seed,
                                          named_splits=named))
    from deltagate.commands.command_line import command_line

    command = command_line(ctx)
    write_faithfulness(reports, json_out, md_out, command)
    for r in reports:
        typer.echo(f"{r.model}: " + ", ".join(f"{f['key']} {f['verdict']}" for f in r.facts))
    typer.echo(f"wrote {json_out} and {md_out}")

"""``deltagate bench decode``: fast (reduced-scale) JPEG decode against full decode, quality and speed."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def megapixel_sizes(text: str) -> list[float]:
    """``--megapixels`` ("1,3,6,12") as numbers; a clear usage error otherwise."""
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise typer.BadParameter(f"expected comma-separated numbers, got {text!r}") from exc


def decode(
    ctx: typer.Context,
    bundle: Annotated[Path, typer.Option(help="Bundle directory.")] = Path("bundles/default"),
    engine: Annotated[str, typer.Option(help="Engine that scores both decodes (torch | onnx).")] = "onnx",
    images: Annotated[int, typer.Option(min=1, help="Images per workload.")] = 48,
    megapixels: Annotated[str, typer.Option(help="Comma-separated photo sizes in MP.")] = "1,3,6,12",
    repeats: Annotated[int, typer.Option(min=1, help="Timed decodes per image and variant (median).")] = 3,
    seed: Annotated[int, typer.Option(help="Image seed.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Write the JSON report here.")] = None,
) -> None:
    """Label agreement, max |ΔEnergy| difference and decode time: fast vs full decode, same images."""
    from deltagate.bench import format_table, write_report
    from deltagate.bench.decode import decode_report
    from deltagate.commands.command_line import command_line

    sizes = megapixel_sizes(megapixels)
    report = decode_report(command_line(ctx), bundle, engine, images, sizes, seed, repeats)
    rows = [{"workload": name, **w} for name, w in report["workloads"].items()]
    typer.echo(report["command"])
    typer.echo(format_table(rows, ("workload", "size", "images", "reduced_decodes", "label_agreement",
                                   "ood_decision_agreement", "max_abs_delta_energy_diff",
                                   "full_decode_ms_median", "fast_decode_ms_median", "speedup_median")))
    if out is not None:
        write_report(report, out)
        typer.echo(f"wrote {out}")

"""``deltagate bench device-preprocess`` (device input path vs CPU path: label and ΔEnergy parity) and ``bench gpu``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def device_preprocess(
    ctx: typer.Context,
    bundle: Annotated[Path, typer.Option(help="Bundle directory.")] = Path("bundles/default"),
    engine: Annotated[str, typer.Option(help="Engine that scores every variant, on the CPU (torch | onnx).")] = "torch",
    device: Annotated[str, typer.Option(help="Where the device path decodes and preprocesses (cpu | cuda).")] = "cpu",
    images: Annotated[int, typer.Option(min=1, help="Images per workload.")] = 32,
    megapixels: Annotated[str, typer.Option(help="Comma-separated photo sizes in MP.")] = "1,12",
    repeats: Annotated[int, typer.Option(min=1, help="Timed runs per image and path (median).")] = 1,
    seed: Annotated[int, typer.Option(help="Image seed.")] = 0,
    out: Annotated[Path | None, typer.Option(help="Write the JSON report here.")] = None,
) -> None:
    """Label/OOD agreement and max |ΔEnergy| difference: device decode + preprocess vs the CPU path."""
    from deltagate.bench import format_table, write_report
    from deltagate.bench.device_preprocess import device_preprocess_report
    from deltagate.commands.bench_decode import megapixel_sizes
    from deltagate.commands.command_line import command_line

    sizes = megapixel_sizes(megapixels)
    report = device_preprocess_report(command_line(ctx), bundle, engine, device, images,
                                      sizes, seed, repeats)
    rows = [{"workload": name, "size": w["size"], "images": w["images"], "device_decoded": w["device_decoded"],
             "cpu": w["cpu_routed"] + w["device_refused"],
             **{f"{k}": v for k, v in w["device_vs_cpu_exact"].items()},
             "device_ms": w["ms_median"]["device"], "cpu_exact_ms": w["ms_median"]["cpu_exact"]}
            for name, w in report["workloads"].items()]
    typer.echo(report["command"])
    typer.echo("device path vs CPU exact path (PIL full decode + models.preprocess):")
    typer.echo(format_table(rows, ("workload", "size", "images", "device_decoded", "cpu", "label_agreement",
                                   "ood_decision_agreement", "max_abs_delta_energy_diff", "max_abs_pixel_diff",
                                   "device_ms", "cpu_exact_ms")))
    if out is not None:
        write_report(report, out)
        typer.echo(f"wrote {out}")


def gpu(
    out: Annotated[Path, typer.Option(help="Folder for gpu.json (and the built bundle unless --work).")] = Path(
        "results/bench/gpu-run"),
    dry_run: Annotated[bool, typer.Option(help="CPU, default bundle, tiny sizes: checks every phase runs.")] = False,
    bundle: Annotated[Path | None, typer.Option(help="Use this bundle instead of a random ViT-B/16.")] = None,
    work: Annotated[Path | None, typer.Option(help="Folder for the built bundle [OUT].")] = None,
    budget_s: Annotated[float | None, typer.Option(help="Skip phases that would start later than this.")] = None,
) -> None:
    """The GPU run: fp16/nvJPEG parity, raw engine by batch size, service under load, NVML (docs/gpu.md)."""
    from deltagate.bench.gpu import main

    argv = ["--out", str(out)] + (["--dry-run"] if dry_run else []) + (["--bundle", str(bundle)] if bundle else [])
    argv += (["--work", str(work)] if work else []) + (["--budget-s", str(budget_s)] if budget_s else [])
    raise typer.Exit(main(argv))

"""``deltagate bench engine|service``: raw engine throughput, and the HTTP service against it."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from deltagate.commands.bench_decode import decode
from deltagate.commands.bench_device import device_preprocess, gpu
from deltagate.commands.command_line import command_line

bench_app = typer.Typer(
    help="Benchmarks: raw engine throughput, and the real server compared with it in the same run.",
    no_args_is_help=True,
)
bench_app.command("decode")(decode)  # fast vs full JPEG decode (deltagate/bench/decode.py)
bench_app.command("device-preprocess")(device_preprocess)  # device input vs CPU path (bench/device_preprocess.py)
bench_app.command("gpu")(gpu)  # the GPU run (deltagate/bench/gpu.py, deltagate/bench/gpu_run.sh)

ENGINE_COLUMNS = ("engine", "device", "batch_size", "forwards", "images_per_s", "batch_p50_ms", "batch_p95_ms",
                  "batch_p99_ms")
SERVICE_COLUMNS = ("concurrency", "requests", "errors", "requests_per_s", "p50_ms", "p95_ms", "p99_ms",
                   "mean_batch_size", "mean_forward_ms", "forward_busy_share", "mean_outside_forward_ms",
                   "throughput_ratio", "p50_overhead_ms")


def _ints(spec: str) -> list[int]:
    try:
        values = [int(v) for v in spec.split(",") if v.strip()]
    except ValueError as exc:
        raise typer.BadParameter(f"expected comma-separated integers, got {spec!r}") from exc
    if not values or min(values) < 1:
        raise typer.BadParameter(f"expected positive integers, got {spec!r}")
    return values


def _size(spec: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in spec.lower().split("x"))
    except ValueError as exc:
        raise typer.BadParameter(f"expected WIDTHxHEIGHT, got {spec!r}") from exc
    return w, h


def _finish(report: dict[str, Any], out: Path | None) -> None:
    from deltagate.bench import write_report

    if out is not None:
        write_report(report, out)
        typer.echo(f"wrote {out}")


Bundle = Annotated[Path, typer.Option(help="Bundle directory.")]
Seconds = Annotated[float, typer.Option(help="Measured seconds per batch size / concurrency level.")]
Out = Annotated[Path | None, typer.Option(help="Write the JSON report here, e.g. results/bench/NAME.json.")]
ImageSize = Annotated[str, typer.Option(help="Size of the generated PNG every forward/request uses (WxH).")]
EngineName = Annotated[str, typer.Option(help="Engine (a name of service.engines.ENGINES, e.g. onnx or torch).")]
Device = Annotated[str, typer.Option(help="cpu, cuda or auto.")]


@bench_app.command("engine")
def engine(
    ctx: typer.Context,
    bundle: Bundle,
    engine: EngineName = "onnx",
    device: Device = "cpu",
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,8,32",
    seconds: Seconds = 5.0,
    image_size: ImageSize = "320x240",
    out: Out = None,
) -> None:
    """Raw engine throughput (images/s) and per-batch latency, in-process with the service's engine classes."""
    from deltagate.bench import engine_report, format_table, synthetic_png

    png = synthetic_png(*_size(image_size))
    report = engine_report(command_line(ctx), bundle, engine, _ints(batch_sizes), seconds, png, device)  # type: ignore[arg-type]
    typer.echo(report["command"])
    typer.echo(format_table(report["results"], ENGINE_COLUMNS))
    pre = report["decode_preprocess"]
    typer.echo(f"decode + preprocess of the {image_size} PNG (one thread): p50 {pre['p50_ms']} ms, "
               f"p95 {pre['p95_ms']} ms over {pre['n']} images")
    _finish(report, out)


@bench_app.command("service")
def service(
    ctx: typer.Context,
    bundle: Bundle,
    engine: EngineName = "onnx",
    device: Device = "cpu",
    concurrency: Annotated[str, typer.Option(help="Comma-separated client counts; include 1 for latency.")] = "1,16",
    seconds: Seconds = 10.0,
    engine_seconds: Annotated[float, typer.Option(help="Seconds per batch size of each raw engine pass.")] = 5.0,
    rounds: Annotated[int, typer.Option(min=1, help="Rounds of (service levels, engine pass).")] = 3,
    warmup_seconds: Annotated[float, typer.Option(help="Unmeasured lead-in per concurrency level.")] = 2.0,
    max_batch_size: Annotated[int, typer.Option(help="Service max_batch_size (and the raw engine's batch).")] = 8,
    max_wait_ms: Annotated[float | None, typer.Option(help="Service max_wait_ms [default: the setting's].")] = None,
    preprocess_workers: Annotated[int | None, typer.Option(help="Service decode threads [default: setting].")] = None,
    image_size: ImageSize = "320x240",
    out: Out = None,
) -> None:
    """Start the real server, load it with concurrent single-image clients, compare with the raw engine."""
    from deltagate.bench import TARGETS, format_table, service_report, synthetic_png
    from service.settings import Settings

    given: dict[str, Any] = {"bundle_path": bundle, "engine": engine, "device": device,
                             "max_batch_size": max_batch_size, "max_wait_ms": max_wait_ms,
                             "preprocess_workers": preprocess_workers, "log_level": "warning"}
    levels = _ints(concurrency)
    # The queue must hold every client's image: a 503 would be the benchmark's fault, not the service's.
    settings = Settings(**{k: v for k, v in given.items() if v is not None},
                        max_queue_size=max(256, max_batch_size, max(levels)))
    png = synthetic_png(*_size(image_size))
    report = service_report(command_line(ctx), settings, png, levels, seconds, engine_seconds, rounds, warmup_seconds)
    typer.echo(report["command"])
    typer.echo("\nraw engine, in-process (pass 0 before round 0; pass r+1 after round r):")
    typer.echo(format_table(report["engine"], ("pass", *ENGINE_COLUMNS)))
    typer.echo(f"\nservice (max_batch_size={settings.max_batch_size}, max_wait_ms={settings.max_wait_ms}, "
               f"preprocess_workers={settings.preprocess_workers}); ratios against the engine passes around each row:")
    typer.echo(format_table(report["service"], ("round", *SERVICE_COLUMNS)))
    v = report["verdict"]
    typer.echo(
        f"\nthroughput at concurrency {v['saturation_concurrency']} / raw engine at batch {settings.max_batch_size}: "
        f"median {v['throughput_ratio_median']:.3f} (rounds: {v['throughput_ratio_per_round']}) "
        f"[target >= {TARGETS['min_throughput_ratio']}: {'met' if v['met']['throughput_ratio'] else 'MISSED'}]"
    )
    if v["concurrency1_p50_overhead_ms_median"] is not None:
        typer.echo(
            f"p50 at concurrency 1 - raw batch-1 forward p50: median {v['concurrency1_p50_overhead_ms_median']} ms "
            f"(rounds: {v['concurrency1_p50_overhead_ms_per_round']}) [target <= +{TARGETS['max_p50_overhead_ms']} "
            f"ms: {'met' if v['met']['concurrency1_p50_overhead'] else 'MISSED'}]"
        )
        typer.echo(
            f"mean time outside the forward at concurrency 1 (paired: same requests): median "
            f"{v['concurrency1_mean_outside_forward_ms_median']} ms "
            f"(rounds: {v['concurrency1_mean_outside_forward_ms_per_round']})"
        )
    typer.echo(f"errors: {v['errors']} [target {TARGETS['max_errors']}: {'met' if v['met']['errors'] else 'MISSED'}]")
    _finish(report, out)


@bench_app.command("bundle")
def bundle(
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle directory to write.")],
    model: Annotated[str, typer.Option(help="open_clip architecture (random weights).")] = "ViT-B-32",
    int8: Annotated[bool, typer.Option(help="Also write the int8 graph.")] = True,
    fp16: Annotated[bool, typer.Option(help="Also write the float16 graph (engine onnx-fp16, for CUDA).")] = False,
) -> None:
    """A random-weight bundle for benchmarks: export, bench-only thresholds, int8 (and float16) graph."""
    from deltagate.bench.bundle import make_bench_bundle

    made = make_bench_bundle(out, model, int8=int8, fp16=fp16)
    files = ", ".join(f"{k} ({v.size / 1e6:.1f} MB)" for k, v in made.manifest.files.items())
    typer.echo(f"wrote bench bundle {made.path}: {files}")


def _port_range(spec: str | None) -> tuple[int, int] | None:
    if not spec:
        return None
    try:
        lo, hi = (int(v) for v in spec.split("-"))
    except ValueError as exc:
        raise typer.BadParameter(f"expected LOW-HIGH, got {spec!r}") from exc
    if not 1 <= lo <= hi <= 65535:
        raise typer.BadParameter(f"expected 1 <= LOW <= HIGH <= 65535, got {spec!r}")
    return lo, hi


@contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM (a timeout, a CI cancel) unwinds like Ctrl-C while the block runs, so the servers a
    run started are stopped; the previous handler is back afterwards (the command may run inside
    another program, e.g. a test session, which must still stop on its own SIGTERM)."""
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _names(spec: str, valid: tuple[str, ...], what: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in spec.split(",") if n.strip())
    bad = [n for n in names if n not in valid]
    if bad:
        raise typer.BadParameter(f"unknown {what} {bad}; valid: {', '.join(valid)}")
    return names


@bench_app.command("compare")
def compare(
    ctx: typer.Context,
    bundle: Bundle,
    out: Annotated[Path, typer.Option(help="JSON report; the Markdown table goes beside it (.md).")] = Path(
        "results/bench/compare.json"),
    rounds: Annotated[int, typer.Option(min=1, help="Rounds (each: every workload in every condition).")] = 3,
    workloads: Annotated[str, typer.Option(help="Comma-separated: small (256x256), photo (1-12 MP).")] = "small,photo",
    conditions: Annotated[str, typer.Option(help="Comma-separated: quiet, neighbour (a one-core busy loop).")] = (
        "quiet,neighbour"),
    peers: Annotated[str, typer.Option(help="Comma-separated: plain, litserve ('' for none).")] = "plain,litserve",
    engines: Annotated[str, typer.Option(help="deltagate servers, one per engine setting: onnx (system 'deltagate', "
                                         "float32), auto (system 'auto'), onnx-int8 (system 'int8').")] = "onnx,auto",
    baseline: Annotated[Path | None, typer.Option(help="Checkout whose service is 'today' (git worktree).")] = None,
    baseline_workloads: Annotated[str, typer.Option(help="Workloads the baseline runs in.")] = "photo",
    seconds: Annotated[float, typer.Option(help="Measured seconds at saturation, per system and segment.")] = 6.0,
    c1_seconds: Annotated[float, typer.Option(help="Measured seconds at concurrency 1.")] = 3.0,
    concurrency: Annotated[int, typer.Option(min=2, help="Clients at saturation.")] = 16,
    ports: Annotated[str | None, typer.Option(help="Port range for the servers, LOW-HIGH [OS picks].")] = None,
) -> None:
    """deltagate vs LitServe vs a plain FastAPI app vs the raw engine, same model, same load, interleaved rounds."""
    from deltagate.bench.compare import CompareConfig, compare_report, markdown_report
    from deltagate.bench.runs import write_report

    cfg = CompareConfig(
        bundle=bundle, rounds=rounds, workloads=_names(workloads, ("small", "photo"), "workloads"),
        conditions=_names(conditions, ("quiet", "neighbour"), "conditions"),
        peers=_names(peers, ("plain", "litserve"), "peers"), baseline=baseline,
        engines=_names(engines, ("onnx", "auto", "onnx-int8"), "engines"),
        baseline_workloads=_names(baseline_workloads, ("small", "photo"), "workloads"),
        seconds=seconds, c1_seconds=c1_seconds, concurrency=concurrency, port_range=_port_range(ports),
    )
    with _sigterm_unwinds():
        report = compare_report(command_line(ctx), cfg, on_segment=lambda partial: write_report(partial, out))
    write_report(report, out)
    md = markdown_report(report)
    out.with_suffix(".md").write_text(md, encoding="utf-8")
    typer.echo(md)
    typer.echo(f"wrote {out} and {out.with_suffix('.md')}")


@bench_app.command("overload")
def overload(
    ctx: typer.Context,
    bundle: Bundle,
    out: Annotated[Path, typer.Option(help="JSON report.")] = Path("results/bench/overload.json"),
    nice: Annotated[str, typer.Option(help="Comma-separated compute_nice values to compare.")] = "0,10",
    rounds: Annotated[int, typer.Option(min=1, help="Rounds (each: every value in every condition).")] = 3,
    conditions: Annotated[str, typer.Option(help="Comma-separated: quiet, neighbour (a one-core busy loop).")] = (
        "quiet,neighbour"),
    seconds: Annotated[float, typer.Option(help="Probe seconds with the budget full, per value and round.")] = 4.0,
    baseline: Annotated[Path | None, typer.Option(help="Another checkout's service as a variant.")] = None,
    ports: Annotated[str | None, typer.Option(help="Port range for the servers, LOW-HIGH [OS picks].")] = None,
    gc_freeze_ablation: Annotated[bool, typer.Option(
        help="Also measure the last --nice value with gc_freeze off (variant nice<N>-nofreeze).")] = False,
    probe_autogroup_nice: Annotated[int, typer.Option(
        min=-20, max=19, help="Scheduling weight of the probe's session where allowed (negative: root or "
        "CAP_SYS_NICE; 0: the same as every session); the report says what was applied.")] = -10,
) -> None:
    """503 latency with the admission budget full, and throughput at saturation, per compute_nice (issue 16)."""
    import json

    from deltagate.bench.overload import OverloadConfig, overload_report
    from deltagate.bench.runs import write_report

    try:
        nice_values = tuple(int(v) for v in nice.split(","))
    except ValueError as exc:
        raise typer.BadParameter(f"expected comma-separated integers, got {nice!r}") from exc
    cfg = OverloadConfig(bundle=bundle, nice_values=nice_values, rounds=rounds,
                         conditions=_names(conditions, ("quiet", "neighbour"), "conditions"), probe_seconds=seconds,
                         baseline=baseline, port_range=_port_range(ports), gc_freeze_ablation=gc_freeze_ablation,
                         probe_autogroup_nice=probe_autogroup_nice)
    with _sigterm_unwinds():
        report = overload_report(command_line(ctx), cfg)
    write_report(report, out)
    typer.echo(json.dumps(report["summary"], indent=2))
    typer.echo(f"wrote {out}")


@bench_app.command("markdown")
def markdown(
    report: Annotated[Path, typer.Argument(help="A bench compare JSON report (complete or cut short).")],
) -> None:
    """Write (and print) the Markdown tables of a compare report from its JSON, beside it (.md)."""
    import json

    from deltagate.bench.compare import markdown_report

    md = markdown_report(json.loads(report.read_text(encoding="utf-8")))
    report.with_suffix(".md").write_text(md, encoding="utf-8")
    typer.echo(md)


@bench_app.command("label-sets")
def label_sets(
    ctx: typer.Context,
    bundle: Annotated[Path, typer.Option(help="Bundle with a text side (e.g. `deltagate bench bundle --out B`).")],
    engine: EngineName = "onnx",
    rounds: Annotated[int, typer.Option(min=1, help="Interleaved rounds (fixed, named, ad-hoc; order rotated).")] = 5,
    seconds: Seconds = 5.0,
    concurrency: Annotated[int, typer.Option(min=1, help="Closed-loop clients.")] = 8,
    ks: Annotated[str, typer.Option(help="Label counts of the text-forward timing.")] = "2,10,50",
    max_batch_size: Annotated[int, typer.Option(help="Service max_batch_size.")] = 8,
    image_size: ImageSize = "320x240",
    ports: Annotated[str | None, typer.Option(help="Port range for the server, LOW-HIGH [OS picks].")] = None,
    out: Out = None,
) -> None:
    """What label sets cost: ms per label of a new ad-hoc set, and images/s of a named / cached ad-hoc set
    against the bundle's fixed classes on one server, in interleaved rounds (target: named >= 0.97 x fixed)."""
    import tempfile

    from deltagate.bench.label_sets import TARGET_NAMED_RATIO, label_sets_report
    from service.settings import Settings

    with tempfile.TemporaryDirectory(prefix="deltagate-bench-sets-") as sets_dir:
        settings = Settings(bundle_path=bundle, engine=engine, device="cpu", max_batch_size=max_batch_size,
                            max_queue_size=max(256, concurrency), log_level="warning", label_sets_dir=Path(sets_dir))
        report = label_sets_report(command_line(ctx), settings, rounds=rounds, seconds=seconds,
                                   concurrency=concurrency, ks=_ints(ks), image_size=_size(image_size),
                                   port_range=_port_range(ports))
    for k, v in report["text_forward"]["per_k"].items():
        typer.echo(f"text forward, {k} new labels: {v['median_ms']} ms ({v['median_ms_per_label']} ms per label)")
    first = report["first_request"]
    typer.echo(f"first request with a new ad-hoc set of {first['k']} labels - the cached one: median "
               f"{first['median_first_minus_cached_ms']} ms ({first['median_ms_per_label']} ms per label)")
    for key, v in report["added_cost"].items():
        if key.startswith("batch_"):
            typer.echo(f"scores.onnx, {key.replace('_', ' ')}, K={report['added_cost']['k']}: {v['scores_onnx_ms']} ms "
                       f"against a {v['forward_ms']} ms forward ({100 * v['scores_share_of_forward']:.3f} %)")
    for cond, r in report["ratios_to_fixed"].items():
        typer.echo(f"images/s {cond} / fixed classes: median {r['median']} (rounds: {r['per_round']})")
    v = report["verdict"]
    typer.echo(f"named / fixed >= {TARGET_NAMED_RATIO}: {'met' if v['met'] else 'MISSED'}; errors: {v['errors']}")
    _finish(report, out)

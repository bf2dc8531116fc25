"""``deltagate serve``: run the HTTP service on a bundle (settings from DELTAGATE_* env and flags)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer


def serve(
    bundle: Annotated[
        Path | None, typer.Option(help="Bundle directory [env DELTAGATE_BUNDLE_PATH; default bundles/default].")
    ] = None,
    engine: Annotated[
        str | None, typer.Option(help="auto | torch | onnx | onnx-int8 | onnx-fp16 | dummy [env DELTAGATE_ENGINE].")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto | cpu | cuda [env DELTAGATE_DEVICE].")] = None,
    host: Annotated[str | None, typer.Option(help="Bind address [env DELTAGATE_HOST].")] = None,
    port: Annotated[int | None, typer.Option(help="Bind port [env DELTAGATE_PORT].")] = None,
    max_batch_size: Annotated[int | None, typer.Option(help="Largest batch [env DELTAGATE_MAX_BATCH_SIZE].")] = None,
    max_wait_ms: Annotated[
        float | None, typer.Option(help="Longest wait to fill a batch [env DELTAGATE_MAX_WAIT_MS].")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes [env DELTAGATE_WORKERS].")] = None,
    instances: Annotated[
        int | None, typer.Option(help="Engine instances [env DELTAGATE_INSTANCES; default from the CPU budget].")
    ] = None,
    intra_op_threads: Annotated[
        int | None,
        typer.Option(help="Threads per instance [env DELTAGATE_INTRA_OP_THREADS; default: budget/instances].")
    ] = None,
) -> None:
    """Serve POST /classify, /healthz, /readyz, /model and /metrics. Flags override DELTAGATE_* env vars."""
    from service.runtime import check_device
    from service.server import run
    from service.settings import Settings

    given: dict[str, Any] = {
        "bundle_path": bundle, "engine": engine, "device": device, "host": host, "port": port,
        "max_batch_size": max_batch_size, "max_wait_ms": max_wait_ms, "workers": workers,
        "instances": instances, "intra_op_threads": intra_op_threads,
    }
    settings = Settings(**{k: v for k, v in given.items() if v is not None})
    check_device(settings)  # device=cuda: refuse to start (exit 2) if an engine would run elsewhere
    run(settings)

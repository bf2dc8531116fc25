"""``deltagate serve``: run the HTTP service on a bundle (settings from DELTAGATE_* env and flags)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from service.settings import Settings, default_text


def _setting(name: str) -> Any:
    """A flag for the setting ``name``: its description and default from :class:`Settings` (one definition)."""
    description = (Settings.model_fields[name].description or "").rstrip(".")
    return typer.Option(help=f"{description} [env DELTAGATE_{name.upper()}]", show_default=default_text(name))


def serve(
    bundle: Annotated[Path | None, _setting("bundle_path")] = None,
    engine: Annotated[str | None, _setting("engine")] = None,
    device: Annotated[str | None, _setting("device")] = None,
    host: Annotated[str | None, _setting("host")] = None,
    port: Annotated[int | None, _setting("port")] = None,
    max_batch_size: Annotated[int | None, _setting("max_batch_size")] = None,
    max_wait_ms: Annotated[float | None, _setting("max_wait_ms")] = None,
    workers: Annotated[int | None, _setting("workers")] = None,
    instances: Annotated[int | None, _setting("instances")] = None,
    intra_op_threads: Annotated[int | None, _setting("intra_op_threads")] = None,
    log_level: Annotated[str | None, _setting("log_level")] = None,
    log_format: Annotated[str | None, _setting("log_format")] = None,
) -> None:
    """Serve POST /classify, /healthz, /readyz, /model and /metrics. Flags override DELTAGATE_* env vars.

    The bundle is checked before the server starts (manifest, files and their SHA-256, threshold, engine).
    """
    from service.runtime import check_device
    from service.server import run

    given: dict[str, Any] = {
        "bundle_path": bundle, "engine": engine, "device": device, "host": host, "port": port,
        "max_batch_size": max_batch_size, "max_wait_ms": max_wait_ms, "workers": workers,
        "instances": instances, "intra_op_threads": intra_op_threads, "log_level": log_level,
        "log_format": log_format,
    }
    settings = Settings(**{k: v for k, v in given.items() if v is not None})
    check_device(settings)  # device=cuda: refuse to start (exit 2) if an engine would run elsewhere
    run(settings)

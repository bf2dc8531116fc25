"""Run the service under uvicorn (what ``deltagate serve`` calls)."""

from __future__ import annotations

import logging
import math
import os

import uvicorn
from fastapi import FastAPI

from models.bundle import MANIFEST_FILE, BundleError
from service.app import create_app
from service.settings import Settings
from service.telemetry import configure_logging

__all__ = ["run", "settings_to_env"]

logger = logging.getLogger(__name__)


def settings_to_env(settings: Settings) -> dict[str, str]:
    """The settings as ``DELTAGATE_*`` variables (how worker processes receive them)."""
    env: dict[str, str] = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"DELTAGATE_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def _worker_app() -> FastAPI:
    """App factory for ``workers > 1``: each worker process reads the settings from its environment."""
    settings = Settings()
    configure_logging(settings.log_level)
    return create_app(settings)


def run(settings: Settings | None = None) -> None:
    """Serve until SIGINT/SIGTERM; in-flight requests get ``graceful_shutdown_s`` to finish.

    Args:
        settings: service settings; read from the environment if omitted.

    Raises:
        BundleError: the bundle directory has no manifest (checked before the server starts).
    """
    settings = settings or Settings()
    configure_logging(settings.log_level)
    if settings.engine != "dummy" and not (settings.bundle_path / MANIFEST_FILE).is_file():
        raise BundleError(f"{settings.bundle_path}: no {MANIFEST_FILE} (set DELTAGATE_BUNDLE_PATH or --bundle)")
    common = {
        "host": settings.host, "port": settings.port, "log_config": None, "access_log": False,
        "timeout_graceful_shutdown": math.ceil(settings.graceful_shutdown_s),
    }
    logger.info("starting", extra={"fields": {"engine": settings.engine, "device": settings.device,
                                              "bundle": str(settings.bundle_path), "port": settings.port,
                                              "workers": settings.workers}})
    if settings.workers == 1:
        uvicorn.run(create_app(settings), **common)  # type: ignore[arg-type]
        return
    # uvicorn spawns workers from an import string, so the settings travel in the environment.
    os.environ.update(settings_to_env(settings))
    uvicorn.run("service.server:_worker_app", factory=True, workers=settings.workers, **common)  # type: ignore[arg-type]

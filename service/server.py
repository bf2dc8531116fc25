"""Run the service under uvicorn (what ``deltagate serve`` calls).

Two behaviours live here rather than in the app, because they concern the process:

* **Fail loudly** (``exit_on_error``, Triton's ``--exit-on-error``): a bundle or engine that cannot
  load is logged with its reason and the process exits with status :data:`EXIT_LOAD_FAILED`, so
  that Docker, systemd or Kubernetes restart it (or report a crash loop) instead of keeping a
  process that never turns ready.
* **Drain on SIGTERM** (``drain_s``, every worker): new requests are answered 503 (with
  ``Retry-After``; readiness false) while the socket still listens and in-flight requests finish;
  then new connections are stopped before the listener closes, so none is reset
  (:mod:`service.supervision`, which also makes workers die with their supervisor).
* **Connection limits** (:mod:`service.connections`): header deadline and size, idle keep-alive
  timeout, and a cap on open connections below the open-file limit.
* **Metrics over several workers**: with ``workers > 1`` the server prepares prometheus-client's
  multiprocess directory (emptied at start) before the workers start, so a scrape of any worker
  reports the sum over all of them.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI

from models.bundle import MANIFEST_FILE, BundleError
from service.app import create_app
from service.connections import ConnectionLimits, ServiceConfig, connection_cap
from service.logs import configure_logging
from service.runtime import check_bundle
from service.settings import Settings
from service.supervision import DrainingServer, Supervisor, register_worker_drain

__all__ = ["run", "settings_to_env", "EXIT_LOAD_FAILED", "LOAD_FAILED_MARKER"]

logger = logging.getLogger(__name__)

# uvicorn's own STARTUP_FAILURE status: its multi-worker supervisor stops on it instead of restarting
# a worker that would fail the same way again.
EXIT_LOAD_FAILED = 3
LOAD_FAILED_MARKER = "load-failed"  # written by a failing worker into the metrics directory


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


def _worker_exit(settings: Settings) -> Any:
    """A worker's load-failure hook: leave the reason for the parent, then exit at once."""

    def exit_now(reason: str) -> None:
        logger.critical("model load failed; worker exits (exit_on_error)",
                        extra={"fields": {"error": reason, "exit_status": EXIT_LOAD_FAILED}})
        if settings.metrics_dir is not None:
            (settings.metrics_dir / LOAD_FAILED_MARKER).write_text(reason, encoding="utf-8")
        # No graceful path is reachable from inside uvicorn's worker process; nothing was served
        # but 503s, so an immediate exit loses nothing. The parent sees status 3 and stops.
        os._exit(EXIT_LOAD_FAILED)

    return exit_now


def _worker_app() -> FastAPI:
    """App factory for ``workers > 1``: each worker process reads the settings from its environment."""
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings, on_load_failure=_worker_exit(settings) if settings.exit_on_error else None)
    register_worker_drain(app.state.begin_drain)
    return app


def _prepare_metrics_dir(settings: Settings) -> tuple[Path, bool]:
    """The multiprocess metrics directory, emptied; and whether we created it (then we remove it)."""
    if settings.metrics_dir is None:
        return Path(tempfile.mkdtemp(prefix="deltagate-metrics-")), True
    directory = settings.metrics_dir
    directory.mkdir(parents=True, exist_ok=True)
    for stale in [*directory.glob("*.db"), directory / LOAD_FAILED_MARKER]:  # a previous run's values
        stale.unlink(missing_ok=True)
    return directory, False


def _run_one(settings: Settings, common: dict[str, Any]) -> None:
    server: uvicorn.Server | None = None
    failure: list[str] = []

    def stop_server(reason: str) -> None:
        failure.append(reason)
        logger.critical("model load failed; shutting down (exit_on_error)",
                        extra={"fields": {"error": reason, "exit_status": EXIT_LOAD_FAILED}})
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_load_failure=stop_server if settings.exit_on_error else None)
    server = DrainingServer(ServiceConfig(app, **common), app.state.begin_drain, settings.drain_s)
    server.run()
    if failure:
        raise SystemExit(EXIT_LOAD_FAILED)
    if not server.started:  # e.g. the port is taken; uvicorn logged why
        raise SystemExit(EXIT_LOAD_FAILED)


def _run_workers(settings: Settings, common: dict[str, Any]) -> None:
    directory, created = _prepare_metrics_dir(settings)
    # prometheus-client picks multiprocess mode from this variable when a worker imports it.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    # uvicorn spawns workers from an import string, so the settings travel in the environment.
    os.environ.update(settings_to_env(settings.model_copy(update={"metrics_dir": directory})))
    try:
        config = ServiceConfig("service.server:_worker_app", factory=True, workers=settings.workers, **common)
        Supervisor(config, sockets=[config.bind_socket()]).run()
        marker = directory / LOAD_FAILED_MARKER
        if marker.is_file():
            logger.critical("a worker failed to load the model; exiting",
                            extra={"fields": {"error": marker.read_text(encoding="utf-8"),
                                              "exit_status": EXIT_LOAD_FAILED}})
            raise SystemExit(EXIT_LOAD_FAILED)
    finally:
        if created:
            shutil.rmtree(directory, ignore_errors=True)


def run(settings: Settings | None = None) -> None:
    """Serve until SIGINT/SIGTERM; in-flight requests get ``graceful_shutdown_s`` to finish.

    Args:
        settings: service settings; read from the environment if omitted.

    Raises:
        BundleError: the bundle is missing, corrupt or uncalibrated (checked before the server starts).
        EngineError: the engine cannot serve the bundle (checked before the server starts).
        SystemExit: status :data:`EXIT_LOAD_FAILED` when the model failed to load (``exit_on_error``).
    """
    settings = settings or Settings()
    configure_logging(settings.log_level, settings.log_format)
    if settings.engine != "dummy" and not (settings.bundle_path / MANIFEST_FILE).is_file():
        raise BundleError(f"{settings.bundle_path}: no {MANIFEST_FILE} (set DELTAGATE_BUNDLE_PATH or --bundle)")
    check_bundle(settings)  # files, hashes, threshold, engine: one line now, not a failed start in the JSON log
    limits = ConnectionLimits.from_settings(settings, connection_cap(settings.max_connections))
    common: dict[str, Any] = {
        "host": settings.host, "port": settings.port, "log_config": None, "access_log": False,
        "timeout_graceful_shutdown": math.ceil(settings.graceful_shutdown_s),
        "timeout_keep_alive": settings.keepalive_timeout_s, "limits": limits, "drain_s": settings.drain_s,
    }
    logger.info("starting", extra={"fields": {"engine": settings.engine, "device": settings.device,
                                              "bundle": str(settings.bundle_path), "port": settings.port,
                                              "workers": settings.workers,
                                              "max_connections": limits.max_connections}})
    if settings.workers == 1:
        _run_one(settings, common)
    else:
        _run_workers(settings, common)

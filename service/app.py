"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from models.version import DELTAGATE_VERSION
from service.connections import EVENT_KINDS, EVENTS, set_early_answer
from service.errors import install_error_handlers
from service.metrics import ServiceMetrics
from service.middleware import BodyBudget, BodyLimitsMiddleware, RequestTelemetryMiddleware
from service.openapi import install_openapi
from service.routes import classify, health, label_sets, metrics, model, ui, v2
from service.runtime import Phase, Runtime
from service.settings import Settings

__all__ = ["create_app", "DOCS_ASSETS"]

DOCS_ASSETS = "/docs/assets"  # where the API docs' JavaScript and CSS are served

_DESCRIPTION = (
    "Image classification with a fine-tuned CLIP that refuses to guess: every image gets a label, "
    "its ΔEnergy score and an out-of-distribution decision against the bundle's calibrated threshold."
)


def create_app(settings: Settings | None = None, on_load_failure: Callable[[str], None] | None = None) -> FastAPI:
    """Build the app. The model loads in the background once the app starts (lifespan).

    Args:
        settings: service settings; read from ``DELTAGATE_*`` environment variables if omitted.
        on_load_failure: called with the reason if the bundle or engine fails to load (the server
            uses it to exit, ``exit_on_error``); without it the app stays up, unready.

    Returns:
        The FastAPI app; ``app.state.runtime`` holds the model, batcher and metrics.
    """
    settings = settings or Settings()
    multiprocess_dir = settings.metrics_dir if settings.workers > 1 else None
    runtime = Runtime(settings, ServiceMetrics(settings.max_batch_size, multiprocess_dir=multiprocess_dir))

    def _after_start(_task: asyncio.Task[None]) -> None:
        if runtime.phase is Phase.FAILED and on_load_failure is not None:
            on_load_failure(runtime.error or "unknown error")

    def begin_drain() -> None:
        """Refuse new work with 503 (readiness false) while in-flight requests finish (server.py)."""
        if runtime.phase is Phase.READY:
            runtime.phase = Phase.STOPPING
        runtime.metrics.ready.set(0)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        runtime.begin_start().add_done_callback(_after_start)  # ready when load and warm-up are done
        yield
        EVENTS.flush(asyncio.get_running_loop())  # the connections are closed: no more events to wait for
        await runtime.stop()  # the server has stopped accepting and waited for in-flight requests
        runtime.metrics.close()

    for kind in EVENT_KINDS:  # zeros from the start, so rates exist
        runtime.metrics.connection_events.labels(event=kind)
    EVENTS.observer = lambda kind: runtime.metrics.connection_events.labels(event=kind).inc()  # this process's server
    set_early_answer(classify.early_overload_answer(runtime))  # a spent budget's 503, before the app runs
    # /docs (Swagger UI) with its script, style and icon served from this process, not a CDN, so the API docs
    # work offline and behind firewalls (fastapi-offline ships the assets; MIT). No /redoc: ReDoc's bundle
    # still fetches its logo from its CDN.
    app = FastAPIOffline(title="deltagate", version=DELTAGATE_VERSION, description=_DESCRIPTION, lifespan=lifespan,
                         static_url=DOCS_ASSETS, redoc_url=None)
    app.state.settings = settings
    app.state.runtime = runtime
    app.state.begin_drain = begin_drain
    install_error_handlers(app)
    install_openapi(app, settings)
    routers = [module.router for module in (classify, label_sets, health, model, metrics, v2)]
    if settings.ui:
        routers.append(ui.router)
    for router in routers:
        app.include_router(router)
    # Bytes of bodies held over all requests (deltagate_request_body_bytes).
    app.state.body_budget = BodyBudget(settings.max_body_bytes_in_flight, runtime.metrics.body_bytes.set)
    app.add_middleware(BodyLimitsMiddleware, max_bytes=settings.max_body_bytes,
                       timeout_s=settings.body_read_timeout_s, budget=app.state.body_budget)
    paths = frozenset(getattr(route, "path", "") for router in routers for route in router.routes)
    # Added last, so outermost: it sees every status, the body limits' early 413 included.
    app.add_middleware(RequestTelemetryMiddleware, metrics=runtime.metrics, known_paths=paths,
                       known_prefixes=frozenset({DOCS_ASSETS}))
    return app

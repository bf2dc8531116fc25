"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.deps import RuntimeDep
from service.runtime import Phase
from service.schemas import HealthResponse, ReadyResponse

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
async def healthz(runtime: RuntimeDep) -> JSONResponse:
    """Liveness: the process answers (503 only if the bundle failed to load, so it gets restarted)."""
    if runtime.phase is Phase.FAILED:
        return JSONResponse(HealthResponse(status="failed", error=runtime.error).model_dump(), status_code=503)
    return JSONResponse(HealthResponse(status="ok").model_dump())


@router.get("/readyz", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
async def readyz(runtime: RuntimeDep) -> JSONResponse:
    """Readiness: 200 once the bundle is loaded and warmed up, 503 before (and while stopping)."""
    body = ReadyResponse(status=runtime.phase.value, error=runtime.error)
    return JSONResponse(body.model_dump(), status_code=200 if runtime.phase is Phase.READY else 503)

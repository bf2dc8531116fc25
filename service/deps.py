"""FastAPI dependencies: settings, runtime and the optional API key, as typed aliases.

They are all ``async def``: none of them blocks, and FastAPI runs a plain ``def`` dependency in its
thread pool, one hand-off per dependency per request. Under load each hand-off waits for a pool
thread to get a core, and starting a new pool thread blocks the event loop until it runs, which
every answer waits for, 503s and health checks included (issue 16).
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.errors import ForbiddenError, UnauthorizedError
from service.runtime import Runtime
from service.settings import Settings

__all__ = ["get_settings", "get_runtime", "require_api_key", "require_admin_key", "SettingsDep", "RuntimeDep",
           "ApiKeyDep", "AdminKeyDep"]

_bearer = HTTPBearer(auto_error=False, description="API key, when the service is configured with one.")


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


SettingsDep = Annotated[Settings, Depends(get_settings)]
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def require_api_key(
    settings: SettingsDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Check ``Authorization: Bearer <key>`` when an API key is configured (constant-time compare)."""
    if settings.api_key is None:
        return
    _check_bearer(settings.api_key.get_secret_value(), credentials, "API key")


async def require_admin_key(
    settings: SettingsDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Check ``Authorization: Bearer <admin key>`` (constant-time); no admin key configured: 403, the
    operation is off."""
    if settings.admin_key is None:
        raise ForbiddenError("creating label sets over HTTP is off: the service has no admin key "
                             "(DELTAGATE_ADMIN_KEY); use `deltagate label-set create` or set one")
    _check_bearer(settings.admin_key.get_secret_value(), credentials, "admin key")


def _check_bearer(key: str, credentials: HTTPAuthorizationCredentials | None, what: str) -> None:
    given = credentials.credentials.encode() if credentials is not None else b""
    if not hmac.compare_digest(given, key.encode()):
        raise UnauthorizedError(f"missing or invalid {what}", headers={"WWW-Authenticate": "Bearer"})


ApiKeyDep = Annotated[None, Depends(require_api_key)]
AdminKeyDep = Annotated[None, Depends(require_admin_key)]

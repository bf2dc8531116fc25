"""FastAPI dependencies: settings, runtime and the optional API key, as typed aliases."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.errors import UnauthorizedError
from service.runtime import Runtime
from service.settings import Settings

__all__ = ["get_settings", "get_runtime", "require_api_key", "SettingsDep", "RuntimeDep", "ApiKeyDep"]

_bearer = HTTPBearer(auto_error=False, description="API key, when the service is configured with one.")


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


SettingsDep = Annotated[Settings, Depends(get_settings)]
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def require_api_key(
    settings: SettingsDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Check ``Authorization: Bearer <key>`` when an API key is configured (constant-time compare)."""
    if settings.api_key is None:
        return
    expected = settings.api_key.get_secret_value().encode()
    given = credentials.credentials.encode() if credentials is not None else b""
    if not hmac.compare_digest(given, expected):
        raise UnauthorizedError("missing or invalid API key", headers={"WWW-Authenticate": "Bearer"})


ApiKeyDep = Annotated[None, Depends(require_api_key)]

"""The OpenAPI document, made to match what the running service does.

FastAPI declares the Bearer scheme on every route that has the API-key dependency, whether or not
a key is configured; without one the service accepts every request, so the document would promise
401s that never come (schemathesis reports it as "accepts requests without authentication").
Here the security requirement, the scheme and the 401 responses are kept only when a key is set (the API key;
for ``PUT /label-sets/{name}`` the admin key).
Likewise the number of images a request may carry, and the number and length of its labels, are settings, so
the document states them (``maxItems``, ``maxLength``) from the settings rather than leaving clients to
discover the 413 or 422.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from service.settings import Settings

__all__ = ["install_openapi"]

_METHODS = frozenset({"get", "put", "post", "delete", "patch", "head", "options", "trace"})
# Operations behind the admin key rather than the API key: without an admin key they answer 403 (off).
ADMIN_OPERATIONS = frozenset({("/label-sets/{name}", "put")})


def _without_security(schema: dict[str, Any], api_key: bool, admin_key: bool) -> dict[str, Any]:
    """Drop the security requirement (and its 401) of every operation whose key is not configured."""
    keep_scheme = False
    for path, path_item in schema.get("paths", {}).items():
        for method, operation in path_item.items():
            if method not in _METHODS or "security" not in operation:
                continue
            if (admin_key if (path, method) in ADMIN_OPERATIONS else api_key):
                keep_scheme = True
                continue
            operation.pop("security", None)
            operation.get("responses", {}).pop("401", None)
    if not keep_scheme:
        schema.get("components", {}).pop("securitySchemes", None)
    return schema


def _with_limits(schema: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The settings' limits on the arrays of every request body: ``maxItems`` of the images (multipart ``file``,
    JSON ``images``) and of the ad-hoc ``labels``, ``maxLength`` of a label."""
    for path_item in schema.get("paths", {}).values():
        for method, operation in path_item.items():
            if method not in _METHODS:
                continue
            for media in operation.get("requestBody", {}).get("content", {}).values():
                for name, prop in media.get("schema", {}).get("properties", {}).items():
                    for array in [prop, *prop.get("anyOf", [])]:
                        if array.get("type") != "array":
                            continue
                        if name in ("file", "images"):
                            array["maxItems"] = settings.max_images_per_request
                        elif name == "labels":
                            array["maxItems"] = settings.max_labels
                            array.setdefault("items", {})["maxLength"] = settings.max_label_chars
    return schema


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Replace ``app.openapi`` with a generator that follows ``settings`` (built once, cached)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            schema = _with_limits(schema, settings)
            app.openapi_schema = _without_security(schema, settings.api_key is not None, settings.admin_key is not None)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

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


def _with_shared_definitions(schema: dict[str, Any]) -> dict[str, Any]:
    """Move the ``$defs`` of hand-declared request bodies (models with nested models, e.g. the v2 inference
    request, whose schemas refer to ``#/components/schemas/...``) into the document's components."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for path_item in schema.get("paths", {}).values():
        for method, operation in path_item.items():
            if method in _METHODS:
                for media in operation.get("requestBody", {}).get("content", {}).values():
                    components.update(media.get("schema", {}).pop("$defs", {}))
    return schema


def _with_v2_limits(schema: dict[str, Any], max_images: int, model: tuple[str, str] | None) -> dict[str, Any]:
    """The v2 inference input's image limit (its data and shape), and, once the model is loaded, the one model
    name and version the ``/v2/models/...`` paths and the request's ``model_name`` accept."""
    v2_input = schema.get("components", {}).get("schemas", {}).get("JsonInferInput")
    if v2_input is not None:
        v2_input["properties"]["data"]["maxItems"] = max_images
        v2_input["properties"]["shape"]["items"]["maximum"] = max_images
    for path, path_item in schema.get("paths", {}).items():
        for method, operation in path_item.items():  # FastAPI adds a 422 to routes with parameters: no v2 route
            if path.startswith("/v2") and method in _METHODS:  # answers one (its errors are 400s)
                operation.get("responses", {}).pop("422", None)
    if model is None:
        return schema
    name, version = model
    for path, path_item in schema.get("paths", {}).items():
        if not path.startswith("/v2/models/"):
            continue
        for method, operation in path_item.items():
            for param in operation.get("parameters", []) if method in _METHODS else []:
                if param.get("in") == "path" and param["name"] in ("model_name", "model_version"):
                    param["schema"]["enum"] = [name if param["name"] == "model_name" else version]
    request = schema.get("components", {}).get("schemas", {}).get("JsonInferRequest")
    if request is not None:
        request["properties"]["model_name"] = {**request["properties"]["model_name"], "anyOf": [
            {"type": "string", "enum": [name]}, {"type": "null"}]}
    return schema


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Replace ``app.openapi`` with a generator that follows ``settings`` (built once, cached once the model is
    loaded: the v2 paths then name the one model served)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            runtime = getattr(app.state, "runtime", None)
            loaded = runtime.model.manifest if runtime is not None and runtime.model is not None else None
            schema = _with_limits(_with_shared_definitions(schema), settings)
            schema = _with_v2_limits(schema, settings.max_images_per_request,
                                     (loaded.name, loaded.version) if loaded is not None else None)
            schema = _without_security(schema, settings.api_key is not None, settings.admin_key is not None)
            if loaded is None:
                return schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

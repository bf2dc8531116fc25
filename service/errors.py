"""Service errors: one exception type per client-visible failure, one JSON error body for all.

Every error response has the body ``{"error": {"status", "code", "message", "details"},
"request_id"}``, except on the Open Inference Protocol routes (``/v2``, :mod:`service.routes.v2`),
which answer the protocol's ``{"error": "<message>"}`` with the same status and headers. The status
and code of each failure live in one place, on its class below; the batcher, the pipeline and the
routes raise these types and the one handler maps them, so there is no second hierarchy to
translate. Every 503 carries ``Retry-After`` (the ``retry_after_s`` setting) unless the raiser set
its own, whether it comes from our own checks, from FastAPI's request validation, from Starlette
(404, 405) or from an unexpected exception (500, logged with its traceback; the client sees no
internals).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = [
    "ServiceError",
    "BadImageError",
    "InvalidBodyError",
    "PayloadTooLargeError",
    "UnsupportedMediaTypeError",
    "InvalidFieldError",
    "BodyTimeoutError",
    "UnauthorizedError",
    "OverloadedError",
    "NotReadyError",
    "DeadlineError",
    "InferenceFailedError",
    "ClientGoneError",
    "InvalidLabelsError",
    "LabelSetsUnavailableError",
    "LabelSetNotFoundError",
    "ForbiddenError",
    "LabelSetLimitError",
    "ModelNotFoundError",
    "validation_details",
    "V2_PREFIX",
    "speaks_v2",
    "error_response",
    "error_body",
    "install_error_handlers",
]

logger = logging.getLogger(__name__)


class ServiceError(Exception):
    """Base of the errors the service answers with a JSON body.

    Args:
        message: what was wrong, for the client.
        details: optional structured details (e.g. which image, which field).
        headers: extra response headers (``Retry-After``, ``WWW-Authenticate``).
    """

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, details: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers or {}


class BadImageError(ServiceError):
    status, code = 400, "invalid_image"  # not an image, truncated, unsupported format


class InvalidBodyError(ServiceError):
    status, code = 400, "invalid_body"  # e.g. JSON that does not parse


class PayloadTooLargeError(ServiceError):
    status, code = 413, "payload_too_large"  # body, pixel count or image count over the limit


class UnsupportedMediaTypeError(ServiceError):
    status, code = 415, "unsupported_media_type"


class InvalidFieldError(ServiceError):
    status, code = 422, "invalid_request"


class BodyTimeoutError(ServiceError):
    status, code = 408, "body_timeout"  # the body did not arrive within body_read_timeout_s


class UnauthorizedError(ServiceError):
    status, code = 401, "unauthorized"


class OverloadedError(ServiceError):
    status, code = 503, "overloaded"  # the in-flight image budget (max_queue_size) is spent


class NotReadyError(ServiceError):
    status, code = 503, "not_ready"  # loading, failed, or shutting down


class DeadlineError(ServiceError):
    status, code = 504, "deadline_exceeded"  # waited past the request's deadline


class InferenceFailedError(ServiceError):
    status, code = 500, "inference_failed"  # the forward of the image's batch raised


class ModelNotFoundError(ServiceError):
    status, code = 404, "model_not_found"  # a /v2 path names a model or version this server does not serve


class ClientGoneError(ServiceError):
    # nginx's non-standard 499: the client closed the connection; nobody reads this response.
    status, code = 499, "client_closed_request"


class InvalidLabelsError(ServiceError):
    status, code = 422, "invalid_labels"  # empty, duplicate, whitespace, too many or too long labels


class LabelSetsUnavailableError(ServiceError):
    # The bundle cannot answer a well-formed label-set request: no text side, no default rule for the prompt
    # mode, or more ad-hoc labels than its rule covers (a state of the bundle, not a malformed request).
    status, code = 409, "label_sets_unavailable"


class LabelSetNotFoundError(ServiceError):
    status, code = 404, "label_set_not_found"


class ForbiddenError(ServiceError):
    status, code = 403, "forbidden"  # e.g. creating label sets over HTTP with no admin key configured


class LabelSetLimitError(ServiceError):
    status, code = 409, "label_set_limit"  # max_label_sets named sets exist already
# Characters of one echoed value (a location part, a message) in an error's details: a 1 MB JSON key
# must not come back as a 1 MB error.
_MAX_ECHO = 200


def _clip(value: Any) -> Any:
    if isinstance(value, str) and len(value) > _MAX_ECHO:
        return value[:_MAX_ECHO] + f"... ({len(value)} characters)"
    return value


def validation_details(errors: Sequence[Mapping[str, Any]], limit: int) -> tuple[list[dict[str, Any]], str]:
    """Validation problems as an error's ``details`` and message, of bounded size whatever the input.

    Args:
        errors: pydantic-style problems (``loc``, ``msg``, ``type``), e.g. ``ValidationError.errors()``.
        limit: how many to list (the ``max_error_details`` setting).

    Returns:
        The first ``limit`` problems as ``{"loc", "msg", "type"}`` (long strings clipped), then, if
        there were more, one entry ``{"loc": [], "msg", "type": "too_many_errors", "count"}`` that
        counts the rest; and the message ``"invalid fields: <locs>"`` naming the listed ones.
    """
    details: list[dict[str, Any]] = [
        {"loc": [_clip(part) for part in e.get("loc", ())], "msg": _clip(e.get("msg")), "type": e.get("type")}
        for e in errors[:limit]
    ]
    fields = ", ".join(".".join(str(part) for part in d["loc"]) or "body" for d in details)
    rest = len(errors) - len(details)
    if rest > 0:
        details.append({"loc": [], "msg": f"{rest} more problems not listed", "type": "too_many_errors",
                        "count": rest})
        fields += f" and {rest} more"
    return details, f"invalid fields: {fields}"


V2_PREFIX = "/v2"  # the Open Inference Protocol's routes


def speaks_v2(path: str) -> bool:
    """Whether ``path`` is an Open Inference Protocol route, whose errors are ``{"error": "<message>"}``."""
    return path == V2_PREFIX or path.startswith(V2_PREFIX + "/")


def _v2_message(message: str, details: Any) -> str:
    """The protocol's error is one string: the message, then the validation problems it names (bounded)."""
    if isinstance(details, list):
        problems = [f"{'.'.join(str(p) for p in d.get('loc', ())) or 'body'}: {d.get('msg')}" for d in details
                    if isinstance(d, dict) and d.get("msg")]
        if problems:
            return f"{message} ({'; '.join(problems)})"
    return message


def error_response(
    request_id: str | None,
    status: int,
    code: str,
    message: str,
    details: Any = None,
    headers: dict[str, str] | None = None,
    path: str = "",
) -> JSONResponse:
    """The JSON error response every error path uses; ``path``: the request's (a ``/v2`` route gets the
    protocol's shape)."""
    return JSONResponse(error_body(request_id, status, code, message, details, path), status_code=status,
                        headers=headers)


def error_body(request_id: str | None, status: int, code: str, message: str, details: Any = None,
               path: str = "") -> dict[str, Any]:
    """The error envelope (also written by the connection level, service.connections, without the app); on a
    ``/v2`` path, the Open Inference Protocol's ``{"error": "<message>"}``."""
    if speaks_v2(path):
        return {"error": _v2_message(message, details)}
    return {"error": {"status": status, "code": code, "message": message, "details": details},
            "request_id": request_id}


def _request_id(request: Request) -> str | None:
    return request.scope.get("state", {}).get("request_id")


def _path(request: Request) -> str:
    return str(request.scope.get("path", ""))


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    headers = exc.headers
    if exc.status == 503 and "Retry-After" not in headers:
        settings = getattr(request.app.state, "settings", None)
        headers = {**headers, "Retry-After": str(getattr(settings, "retry_after_s", 1))}
    return error_response(_request_id(request), exc.status, exc.code, exc.message, exc.details, headers,
                          _path(request))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    settings = getattr(request.app.state, "settings", None)
    details, message = validation_details(exc.errors(), getattr(settings, "max_error_details", 20))
    return error_response(_request_id(request), 422, "invalid_request", message, details, path=_path(request))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed"}
    headers = dict(exc.headers or {})
    if exc.status_code == 405:  # Starlette names the first route of the path only; a path may have several
        headers["Allow"] = ", ".join(_allowed_methods(request))
    return error_response(
        _request_id(request), exc.status_code, code.get(exc.status_code, "http_error"), str(exc.detail),
        headers=headers, path=_path(request),
    )


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app answers on this path (``GET /x`` and ``PUT /x`` are two routes)."""
    from starlette.routing import Match

    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        if match is not Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # Starlette re-raises after this handler so the server logs the traceback once; not logged here.
    return error_response(_request_id(request), 500, "internal_error", "internal server error", path=_path(request))


def install_error_handlers(app: FastAPI) -> None:
    """Route every error through :func:`error_response`."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)

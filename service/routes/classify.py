"""``POST /classify``: images in, labels with ΔEnergy OOD decisions out.

The classes are the bundle's own, a named label set's (``?label_set=NAME``) or the request's ad-hoc
``labels`` (docs/label-sets.md); the images go through the same batches either way, and a label set's
scores come from the batch's image features and the set's embeddings (:mod:`service.label_sets`).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from uvicorn._types import ASGI3Application, HTTPScope

from service.connections import EVENTS, EarlyAnswer
from service.deps import ApiKeyDep, RuntimeDep
from service.errors import NotReadyError, OverloadedError, error_body
from service.middleware import request_id_of
from service.pipeline import (
    classify_images,
    parse_images,
    receive_body,
    record_classified,
    resolve_top_k,
    resolve_vocabulary,
)
from service.routes import v2
from service.runtime import Phase, Runtime
from service.schemas import LABEL_ITEM_SCHEMA, ClassifyJSONRequest, ClassifyResponse, ErrorResponse, ModelRef, OnError

router = APIRouter(tags=["classify"])

# The route reads its body itself (multipart or JSON, by content type), so it documents both here.
_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["file"],
                "properties": {
                    "file": {"type": "array", "items": {"type": "string", "format": "binary"}, "minItems": 1,
                             "description": "Image file(s); repeat the field for several images."},
                    "top_k": {"type": "integer", "minimum": 1,
                              "description": "Entries in each top_k list; the query parameter wins if both are given."},
                    "labels": {"type": "array", "items": LABEL_ITEM_SCHEMA, "minItems": 2, "uniqueItems": True,
                               "description": "Ad-hoc labels (repeat the field): classify against these instead of "
                                              "the bundle's classes; not together with ?label_set."},
                    "prompts": {"type": "string", "enum": ["learned", "zero-shot"],
                                "description": "Prompt mode of ad-hoc labels; the query parameter wins."},
                },
            }},
            "application/json": {"schema": ClassifyJSONRequest.model_json_schema()},
        },
    }
}
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text} for code, text in {
        400: "Not an image, truncated, unsupported format, aspect ratio over the limit (these per image: only "
             "with on_error=fail), or unparsable JSON.",
        401: "Missing or wrong API key (only when one is configured).",
        404: "No label set of that name.",
        409: "Label sets are unavailable on this bundle: no text side, no default rule for the prompt mode, or "
             "more ad-hoc labels than the rule covers.",
        408: "The body did not arrive within the body read timeout (the connection is closed).",
        413: "Body or number of images over the limit, or an image's pixel count before or after resizing "
             "(per image: only with on_error=fail).",
        415: "Content type is neither multipart/form-data nor application/json.",
        422: "Malformed fields (e.g. bad base64, top_k < 1, no image), invalid labels (empty, duplicate, "
             "whitespace, too many, too long), label_set and labels together, or label sets on a bundle without "
             "a text side.",
        500: "The forward pass of this request's batch failed.",
        503: "Not ready, or overloaded (in-flight image budget spent: answered before the body is read; or "
             "request bodies in memory over their limit); see Retry-After.",
        504: "The request waited past its deadline.",
    }.items()
}


@router.post("/classify", response_model=ClassifyResponse, responses=_ERRORS, openapi_extra=_REQUEST_BODY)
async def classify(
    request: Request,
    runtime: RuntimeDep,
    _auth: ApiKeyDep,
    top_k: Annotated[int | None, Query(
        ge=1, description="Entries in each top_k list; wins over the body's top_k when both are given."
    )] = None,
    label_set: Annotated[str | None, Query(
        description="Classify against this named label set (GET /label-sets) instead of the bundle's classes."
    )] = None,
    prompts: Annotated[Literal["learned", "zero-shot"] | None, Query(
        description="Prompt mode of ad-hoc labels (default: the bundle's); wins over the body's field."
    )] = None,
    on_error: Annotated[OnError, Query(
        description="An image that cannot be decoded (not an image, truncated, too many pixels, too elongated): "
        "fail = the request fails (400/413, naming it); skip = the other images are answered and it is listed "
        "in errors."
    )] = "fail",
) -> ClassifyResponse:
    """Classify images; out-of-distribution ones are flagged (is_ood, decision=rejected_ood)."""
    model, batcher = runtime.require_ready()
    s, state = runtime.settings, request.state
    deadline = getattr(state, "started_at", time.monotonic()) + s.request_timeout_s
    batcher.check_room()  # before the body is read: 503 at once when the budget is spent
    body = await receive_body(request, s)  # no slot held while it arrives: a slow sender gets 408, holds nothing
    with batcher.admit() as ticket:
        parsed = await parse_images(body, s, ticket, runtime.pool)
        k = resolve_top_k(top_k, parsed.top_k, s.default_top_k)
        vocab = await resolve_vocabulary(runtime, label_set, parsed.labels, prompts or parsed.prompts, deadline)
        images = parsed.images
        out = await classify_images(runtime, batcher, ticket, images, k, on_error, deadline, request.receive,
                                    vocabulary=vocab)
    record_classified(runtime, state.log_fields, len(images), out)
    results = out.results
    return ClassifyResponse(
        model=ModelRef(name=model.manifest.name, version=model.manifest.version),
        request_id=state.request_id, label_set=vocab.label_set if vocab is not None else None,
        calibrated=vocab.calibrated if vocab is not None else True, num_images=len(images),
        num_rejected_ood=sum(r.is_ood for r in results), results=results, errors=out.errors,
    )


def early_overload_answer(runtime: Runtime) -> EarlyAnswer:
    """The 503 of a spent admission budget, given by the connection level before the app runs.

    :mod:`service.connections` asks this as soon as a request's headers are complete. When the
    route would refuse the request for its budget, the answer is the route's own (503
    ``overloaded``, the same message, ``Retry-After``, ``X-Request-ID``, counted in the request
    metrics) without FastAPI's routing, middleware and access-log line: under overload the 503s
    are most of the traffic, and the event loop must answer them at once to stay
    responsive (issue 16). The access log gets one line a second with their count instead.
    Requests the app would answer otherwise first (a wrong API key: 401; a declared body over the
    limit: 413) are left to the app. The Open Inference Protocol's inference routes
    (:func:`service.routes.v2.infer_route`) check the budget first too, and get the same early 503 in
    the protocol's error shape, counted under their own route.
    """
    settings = runtime.settings
    expected = settings.api_key.get_secret_value().encode() if settings.api_key is not None else None
    retry_after = str(settings.retry_after_s).encode()

    def refuse(error: OverloadedError, route: str) -> ASGI3Application:
        async def app(scope: Any, receive: Any, send: Any) -> None:
            start = time.perf_counter()
            request_id = request_id_of(scope)
            content = error_body(request_id, error.status, error.code, error.message, path=scope["path"])
            body = json.dumps(content).encode()
            await send({"type": "http.response.start", "status": error.status, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                (b"retry-after", retry_after), (b"x-request-id", request_id.encode())]})
            await send({"type": "http.response.body", "body": body})
            runtime.metrics.observe_request(route, "POST", error.status, time.perf_counter() - start)
            EVENTS.record("overloaded", asyncio.get_running_loop())

        return app

    def early(scope: HTTPScope) -> ASGI3Application | None:
        route = "/classify" if scope["path"] == "/classify" else v2.infer_route(scope["path"])  # v2 infer too
        if route is None or scope["method"] != "POST" or runtime.batcher is None or runtime.phase is not Phase.READY:
            return None
        try:
            runtime.batcher.check_room(1)  # what the route checks first
        except NotReadyError:  # shutting down: the app's 503 not_ready
            return None
        except OverloadedError as exc:
            error = exc
        else:
            return None
        headers = dict(scope["headers"])
        if expected is not None:
            scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), expected):
                return None
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > settings.max_body_bytes:
            return None
        return refuse(error, route)

    return early

"""``POST /classify``: images in, labels with ΔEnergy OOD decisions out."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from service.deps import ApiKeyDep, RuntimeDep
from service.pipeline import classify_images, parse_images, receive_body, resolve_top_k
from service.schemas import ClassifyJSONRequest, ClassifyResponse, ErrorResponse, ModelRef, OnError

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
        408: "The body did not arrive within the body read timeout (the connection is closed).",
        413: "Body or number of images over the limit, or an image's pixel count before or after resizing "
             "(per image: only with on_error=fail).",
        415: "Content type is neither multipart/form-data nor application/json.",
        422: "Malformed fields (e.g. bad base64, top_k < 1, no image).",
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
    on_error: Annotated[OnError, Query(
        description="An image that cannot be decoded (not an image, truncated, too many pixels, too elongated): "
        "fail = the request fails (400/413, naming it); skip = the other images are answered and it is listed "
        "in errors."
    )] = "fail",
) -> ClassifyResponse:
    """Classify images; out-of-distribution ones are flagged (is_ood, decision=rejected_ood)."""
    model, batcher = runtime.require_ready()
    s, state = runtime.settings, request.state
    batcher.check_room()  # before the body is read: 503 at once when the budget is spent
    body = await receive_body(request, s)  # no slot held while it arrives: a slow sender gets 408, holds nothing
    with batcher.admit() as ticket:
        images, body_top_k = await parse_images(body, s, ticket, runtime.pool)
        k = resolve_top_k(top_k, body_top_k, s.default_top_k)
        deadline = getattr(state, "started_at", time.monotonic()) + s.request_timeout_s
        out = await classify_images(runtime, batcher, ticket, images, k, on_error, deadline, request.receive)
    results = out.results
    runtime.metrics.observe_images([r.label for r in results], [r.gate_score for r in results],
                                   [r.delta_energy for r in results], [r.is_ood for r in results])
    runtime.metrics.observe_image_errors([e.code for e in out.errors])
    state.log_fields.update({"images": len(images), "batch_sizes": [r.batch_size for r in out.rows],
                             "labels": [r.label for r in results], "is_ood": [r.is_ood for r in results],
                             **({"failed": [e.index for e in out.errors]} if out.errors else {})})
    return ClassifyResponse(
        model=ModelRef(name=model.manifest.name, version=model.manifest.version),
        request_id=state.request_id, num_images=len(images),
        num_rejected_ood=sum(r.is_ood for r in results), results=results, errors=out.errors,
    )

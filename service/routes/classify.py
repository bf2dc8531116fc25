"""``POST /classify``: images in, labels with ΔEnergy OOD decisions out.

The classes are the bundle's own, a named label set's (``?label_set=NAME``) or the request's ad-hoc
``labels`` (docs/label-sets.md); the images go through the same batches either way, and a label set's
scores come from the batch's image features and the set's embeddings (:mod:`service.label_sets`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Query, Request

from models.scoring_spec import FEATURES_NAME
from service.deps import ApiKeyDep, RuntimeDep
from service.errors import DeadlineError, InvalidFieldError
from service.label_sets import Vocabulary
from service.pipeline import (
    parse_images,
    postprocess,
    prepare_images,
    receive_body,
    resolve_top_k,
    run_batched,
    score_results,
)
from service.runtime import Runtime
from service.schemas import LABEL_ITEM_SCHEMA, ClassifyJSONRequest, ClassifyResponse, ErrorResponse, ModelRef
from service.telemetry import BUNDLE_LABEL_SET

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
        400: "Not an image, truncated, unsupported format, aspect ratio over the limit, or unparsable JSON.",
        401: "Missing or wrong API key (only when one is configured).",
        404: "No label set of that name.",
        409: "Label sets are unavailable on this bundle: no text side, no default rule for the prompt mode, or "
             "more ad-hoc labels than the rule covers.",
        408: "The body did not arrive within the body read timeout (the connection is closed).",
        413: "Body, pixel count (before or after resizing) or number of images over the limit.",
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


async def _vocabulary(runtime: Runtime, label_set: str | None, labels: list[str] | None,
                      prompts: str | None) -> Vocabulary | None:
    """The request's classes: None for the bundle's own, else a named set's or the ad-hoc labels'."""
    if label_set is not None and labels is not None:
        raise InvalidFieldError("give either ?label_set (a named set) or labels (ad-hoc), not both",
                                details=[{"loc": ["query", "label_set"]}, {"loc": ["body", "labels"]}])
    if label_set is None and labels is None:
        if prompts is not None:
            raise InvalidFieldError("prompts applies to ad-hoc labels only", details=[{"loc": ["prompts"]}])
        return None
    sets = runtime.require_label_sets()
    if label_set is not None:
        if prompts is not None:
            raise InvalidFieldError("a named label set has its own prompt mode: do not send prompts with it",
                                    details=[{"loc": ["prompts"]}])
        return sets.named(label_set)
    assert labels is not None
    return await sets.ad_hoc(labels, prompts, runtime.pool)


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
        try:  # new ad-hoc labels wait for the text graph in the pool: that wait counts against the deadline
            vocab = await asyncio.wait_for(_vocabulary(runtime, label_set, parsed.labels, prompts or parsed.prompts),
                                           max(deadline - time.monotonic(), 0.0))
        except TimeoutError as exc:
            raise DeadlineError("the labels were not embedded within the request timeout") from exc
        images = parsed.images
        pixels = await prepare_images(images, model.manifest.preprocess, s.max_image_pixels, runtime.pool,
                                      s.fast_decode, runtime.device_input, runtime.shape_limits)
        rows = await run_batched(request, batcher, ticket, pixels, deadline)
    filenames = [im.filename for im in images]
    if vocab is None:
        results = postprocess(rows, model.manifest, k, filenames)
    else:
        sets = runtime.require_label_sets()
        features = np.stack([r.outputs[FEATURES_NAME] for r in rows])  # (N, D)
        outputs = await asyncio.get_running_loop().run_in_executor(runtime.pool, sets.score, vocab, features)
        results = score_results(outputs, vocab.labels, vocab.calibration, model.manifest, k, filenames)
    metric_set = runtime.label_sets.metric_label(vocab) if runtime.label_sets is not None else BUNDLE_LABEL_SET
    runtime.metrics.observe_images(metric_set, [r.label for r in results], [r.gate_score for r in results],
                                   [r.delta_energy for r in results], [r.is_ood for r in results])
    state.log_fields.update({"images": len(results), "batch_sizes": [r.batch_size for r in rows],
                             "labels": [r.label for r in results], "is_ood": [r.is_ood for r in results],
                             "label_set": vocab.label_set if vocab is not None else None})
    return ClassifyResponse(
        model=ModelRef(name=model.manifest.name, version=model.manifest.version),
        request_id=state.request_id, label_set=vocab.label_set if vocab is not None else None,
        calibrated=vocab.calibrated if vocab is not None else True, num_images=len(results),
        num_rejected_ood=sum(r.is_ood for r in results), results=results,
    )

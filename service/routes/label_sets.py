"""``GET /label-sets``, ``GET /label-sets/{name}``, ``PUT /label-sets/{name}``: named label sets over HTTP.

``PUT`` (behind the admin key) takes the labels and, optionally, example images per label in one
multipart body; the examples go through the service's own batches (admitted chunk by chunk like any
request's images), their gate scores calibrate the set's threshold, and the set's file is written
atomically into the label-set directory, where every worker picks it up (:mod:`service.label_sets`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from models.label_set_create import example_gate_scores
from models.label_sets import LabelSetFile, make_label_set
from models.scoring_spec import FEATURES_NAME
from models.text_runtime import LabelError
from service.deps import AdminKeyDep, ApiKeyDep, RuntimeDep
from service.errors import (
    InvalidFieldError,
    InvalidLabelsError,
    OverloadedError,
    PayloadTooLargeError,
    ServiceError,
    UnsupportedMediaTypeError,
)
from service.label_sets import LabelSets
from service.pipeline import InputImage, decode_images, run_batched
from service.runtime import Runtime
from service.schemas import ErrorResponse, LabelSetInfo, LabelSetList, LabelSetSummary

router = APIRouter(tags=["label sets"])

EXAMPLE_FIELD_PREFIX = "example:"  # multipart file field "example:<label>" holds an example image of <label>
_ADMISSION_RETRY_S = 0.05

_PUT_BODY: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["labels"],
        "properties": {
            "labels": {"type": "array", "items": {"type": "string"}, "minItems": 2,
                       "description": "The set's labels (repeat the field)."},
            "prompts": {"type": "string", "enum": ["learned", "zero-shot"],
                        "description": "Prompt mode (default: the bundle's)."},
            "target_tpr": {"type": "number", "exclusiveMinimum": 0.5, "maximum": 0.999,
                           "description": "Share of ID images that must pass (default 0.95; with examples)."},
        },
        "additionalProperties": {"type": "string", "format": "binary",
                                 "description": f"'{EXAMPLE_FIELD_PREFIX}<label>': an example image of <label> "
                                                "(repeat; every label or none)."},
    }}}}
}


def _summary(ls: LabelSetFile) -> dict[str, Any]:
    return {"name": ls.name, "labels": ls.labels, "num_labels": len(ls.labels), "prompts": ls.prompts,
            "calibrated": ls.calibrated, "threshold": ls.calibration.threshold,
            "target_tpr": ls.calibration.target_tpr, "gate_score_name": ls.calibration.score,
            "created_at": ls.created_at, "source": ls.source}


def _info(ls: LabelSetFile) -> LabelSetInfo:
    return LabelSetInfo(**_summary(ls), calibration=ls.calibration.model_dump(
        exclude={"quantile_levels", "quantile_values"}), examples=ls.examples, bundle=ls.bundle.model_dump(),
        sha256=ls.sha256)


def _sets(runtime: Runtime) -> LabelSets:
    runtime.require_ready()
    return runtime.require_label_sets()


@router.get("/label-sets", response_model=LabelSetList,
            responses={401: {"model": ErrorResponse}, 409: {"model": ErrorResponse}, 503: {"model": ErrorResponse}})
def list_label_sets(runtime: RuntimeDep, _auth: ApiKeyDep) -> LabelSetList:
    """The named label sets this worker serves, the files it does not serve (and why), the prompt modes."""
    sets = _sets(runtime)
    loaded = sets.store.all()
    return LabelSetList(
        label_sets=[LabelSetSummary(**_summary(s.file)) for s in loaded], not_loaded=dict(sets.store.errors),
        directory=str(sets.store.directory), prompt_modes=sets.info.prompt_modes,
        default_prompts=sets.info.default_prompts,
        rule_label_counts={mode: [rule.ks[0], rule.ks[-1]] for mode, rule in sets.info.rules.items()},
    )


@router.get("/label-sets/{name}", response_model=LabelSetInfo,
            responses={401: {"model": ErrorResponse}, 404: {"model": ErrorResponse}, 409: {"model": ErrorResponse},
                       503: {"model": ErrorResponse}})
def get_label_set(name: str, runtime: RuntimeDep, _auth: ApiKeyDep) -> LabelSetInfo:
    """One named label set: labels, prompt mode, gate (threshold, calibration record), examples, bundle."""
    sets = _sets(runtime)
    sets.named(name)  # 404 when unknown
    return _info(sets.store.sets[name].file)


async def _read_put_form(request: Request, runtime: Runtime) -> tuple[list[str], str | None, float,
                                                                    dict[str, list[InputImage]]]:
    s = runtime.settings
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "multipart/form-data":
        raise UnsupportedMediaTypeError(f"content type {content_type or '(none)'!r} is not accepted; send "
                                        "multipart/form-data (fields 'labels', 'example:<label>')")
    examples: dict[str, list[InputImage]] = {}
    try:
        form_cm = request.form(max_files=s.max_label_set_examples, max_fields=s.max_labels + 16)
        async with form_cm as form:
            labels = form.getlist("labels")
            prompts, tpr = form.get("prompts"), form.get("target_tpr")
            for key, value in form.multi_items():
                if key in ("labels", "prompts", "target_tpr"):
                    continue
                if not key.startswith(EXAMPLE_FIELD_PREFIX) or not isinstance(value, UploadFile):
                    raise InvalidFieldError(f"unknown field {key!r}: send 'labels', 'prompts', 'target_tpr' and "
                                            f"files named '{EXAMPLE_FIELD_PREFIX}<label>'", details=[{"loc": [key]}])
                if value.size is not None and value.size > s.max_example_bytes:
                    raise PayloadTooLargeError(f"example {value.filename!r} of {key[len(EXAMPLE_FIELD_PREFIX):]!r} "
                                               f"has {value.size} bytes; the limit is {s.max_example_bytes}")
                examples.setdefault(key[len(EXAMPLE_FIELD_PREFIX):], []).append(
                    InputImage(await value.read(), value.filename))
    except StarletteHTTPException as exc:  # the multipart parser's own limits (files, fields)
        if "Too many files" in str(exc.detail):
            raise PayloadTooLargeError(f"more than {s.max_label_set_examples} example images; the limit is "
                                       f"{s.max_label_set_examples} (DELTAGATE_MAX_LABEL_SET_EXAMPLES)") from exc
        raise
    if any(not isinstance(v, str) for v in labels) or not labels:
        raise InvalidLabelsError("send the set's labels as text fields 'labels' (repeat the field)",
                                 details=[{"loc": ["labels"]}])
    if prompts is not None and not isinstance(prompts, str):
        raise InvalidFieldError("field 'prompts' must be text", details=[{"loc": ["prompts"]}])
    target = 0.95
    if tpr is not None:
        try:
            target = float(str(tpr))
        except ValueError:
            target = -1.0
        if not 0.5 < target <= 0.999:
            raise InvalidFieldError("target_tpr must be a number in (0.5, 0.999]", details=[{"loc": ["target_tpr"]}])
    return [str(v) for v in labels], prompts, target, examples


async def _example_features(request: Request, runtime: Runtime, images: list[InputImage],
                            deadline: float) -> np.ndarray:
    """(n, D) features of the examples through the service's batches, one admitted chunk at a time."""
    model, batcher = runtime.require_ready()
    s = runtime.settings
    out = []
    for start in range(0, len(images), s.max_batch_size):
        chunk = images[start : start + s.max_batch_size]
        while True:  # wait for room in the in-flight budget rather than fail an admin upload under load
            try:
                ticket = batcher.admit(len(chunk))
                break
            except OverloadedError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(_ADMISSION_RETRY_S)
        with ticket:
            pixels = await decode_images(chunk, model.manifest.preprocess, s.max_image_pixels, runtime.pool,
                                         s.fast_decode, runtime.device_input, runtime.shape_limits, start)
            failed = [p for p in pixels if isinstance(p, ServiceError)]
            if failed:  # an example that cannot be decoded fails the upload (400/413 naming it)
                raise failed[0]
            rows = await run_batched(request.receive, batcher, ticket, pixels, deadline)
        out.append(np.stack([r.outputs[FEATURES_NAME] for r in rows]))
    return np.concatenate(out)


@router.put("/label-sets/{name}", response_model=LabelSetInfo, status_code=201, openapi_extra=_PUT_BODY,
            responses={200: {"model": LabelSetInfo, "description": "An existing set was replaced."},
                       **{code: {"model": ErrorResponse} for code in (401, 403, 409, 413, 415, 422, 503, 504)}})
async def put_label_set(name: str, request: Request, response: Response, runtime: RuntimeDep,
                        _admin: AdminKeyDep) -> LabelSetInfo:
    """Create (201) or replace (200) a named label set: labels, prompt mode, and example images per label to
    calibrate its threshold on (without examples it gates with the bundle's default rule, calibrated: false)."""
    sets = _sets(runtime)
    sets.check_name(name)
    s = runtime.settings
    labels, prompts, target_tpr, examples = await _read_put_form(request, runtime)
    mode = sets.mode(prompts)
    labels = sets.checked_labels(labels, mode)
    total = sum(len(v) for v in examples.values())
    if total > s.max_label_set_examples:
        raise PayloadTooLargeError(f"{total} example images; the limit is {s.max_label_set_examples}")
    unknown = sorted(set(examples) - set(labels))
    if unknown:
        raise InvalidLabelsError(f"examples for labels that are not in the set: {unknown}",
                                 details=[{"loc": [EXAMPLE_FIELD_PREFIX + u]} for u in unknown])
    loop = asyncio.get_running_loop()
    embeddings = await loop.run_in_executor(runtime.pool, sets.encoder.embed, labels, mode)  # (K, D)
    scores = None
    if examples:
        started = getattr(request.state, "started_at", time.monotonic())
        deadline = started + max(s.request_timeout_s, s.label_set_timeout_s)
        flat = [(label, im) for label in labels for im in examples.get(label, [])]
        feats = await _example_features(request, runtime, [im for _, im in flat], deadline)
        by_label = {label: feats[[i for i, (lab, _) in enumerate(flat) if lab == label]] for label in examples}
        scores = example_gate_scores(sets.bundle, sets.scorer, embeddings, by_label)
    existed = name in sets.store.sets
    try:
        label_set = make_label_set(sets.bundle, name, labels, mode, embeddings, source="api", example_scores=scores,
                                   target_tpr=target_tpr)
    except LabelError as exc:
        raise InvalidLabelsError(str(exc)) from exc
    await loop.run_in_executor(runtime.pool, sets.store.put, label_set)
    response.status_code = 200 if existed else 201
    return _info(label_set)

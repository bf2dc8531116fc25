"""Open Inference Protocol (KServe v2) REST routes beside ``/classify``: health, metadata and inference.

The inference route is ``POST /classify`` in the protocol's clothes: the same admission (a spent budget is
answered 503 before the body is read), body limits, batches, image limits, deadline, metrics and access log,
through the same pipeline functions (:func:`service.pipeline.classify_images`); only the request's and the
response's encodings differ (:mod:`service.v2_tensors`). Errors are the protocol's ``{"error": "<message>"}``
with the statuses of ``/classify`` (:mod:`service.errors`); a request the protocol refuses is a 400, as in
Triton. A request is all or nothing: one image that does not decode fails it (``/classify``'s ``on_error=fail``).

The version in the optional ``/versions/{model_version}`` paths is the bundle's; the model's name is the bundle's.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse, Response

from models.bundle import BundleManifest
from models.version import DELTAGATE_VERSION
from service.deps import ApiKeyDep, RuntimeDep
from service.errors import InvalidBodyError, ModelNotFoundError, ServiceError, UnsupportedMediaTypeError
from service.label_sets import Vocabulary
from service.pipeline import classify_images, receive_bytes, record_classified, resolve_top_k, resolve_vocabulary
from service.runtime import Phase, Runtime
from service.v2_schemas import (
    EXTENSIONS,
    InferResponse,
    JsonInferRequest,
    ModelMetadataResponse,
    ModelReadyResponse,
    ServerLiveResponse,
    ServerMetadataResponse,
    ServerReadyResponse,
    V2ErrorResponse,
)
from service.v2_tensors import (
    HEADER_LENGTH,
    InferCall,
    encode_response,
    header_length,
    output_tensors,
    parse_infer_request,
)
from service.v2_tensors import tensor_metadata as tensor_metadata_of

__all__ = ["router", "INFER_PATHS", "PLATFORM", "infer_route"]

router = APIRouter(tags=["open inference protocol (v2)"])

PLATFORM = "deltagate"  # the model's "platform" in its metadata: a CLIP behind deltagate's gate, any engine
_JSON, _BINARY = "application/json", "application/octet-stream"
INFER_PATHS = ("/v2/models/{model_name}/infer", "/v2/models/{model_name}/versions/{model_version}/infer")
_INFER_PATH = re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/infer$")


def infer_route(path: str) -> str | None:
    """The inference route template a request path matches (its metrics label), None if none."""
    match = _INFER_PATH.match(path)
    return None if match is None else INFER_PATHS[1 if match.group(1) else 0]

ModelName = Annotated[str, Path(description="The bundle's name (GET /v2/models/{model_name} or /model says it).")]
ModelVersion = Annotated[str, Path(description="The bundle's version, the only one served.")]


def _errors(texts: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": V2ErrorResponse, "description": text} for code, text in texts.items()}


_NOT_FOUND = {404: "No model of that name or version is served."}
_LABEL_SETS = {404: "No model of that name or version is served, or no label set of the parameter label_set's name.",
               409: "Label sets are unavailable on this bundle: no text side, no default rule for the prompt mode, "
                    "or more ad-hoc labels than the rule covers."}
_NOT_READY = {503: "The model is not ready (loading, failed or stopping); see Retry-After."}
_INFER_ERRORS = _errors({
    400: "A request the protocol or this model refuses (an unknown input, output, parameter or field, a shape that "
         "does not match the data, malformed binary data or JSON), or an image that does not decode (not an "
         "image, truncated, unsupported, too elongated).",
    401: "Missing or wrong API key (only when one is configured).",
    **_LABEL_SETS,
    408: "The body did not arrive within the body read timeout (the connection is closed).",
    413: "Body or number of images over the limit, or an image's pixel count before or after resizing.",
    415: "Content type neither application/json nor application/octet-stream (or none), or a compressed body.",
    500: "The forward pass of this request's batch failed.",
    503: "Not ready, or overloaded (in-flight image budget spent: answered before the body is read; or request "
         "bodies in memory over their limit); see Retry-After.",
    504: "The request waited past its deadline.",
})
_INFER_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            _JSON: {"schema": JsonInferRequest.model_json_schema(ref_template="#/components/schemas/{model}")},
            _BINARY: {"schema": {
                "type": "string", "format": "binary",
                "description": f"Binary tensor data extension: a {HEADER_LENGTH} header gives the length of the "
                "JSON header that starts the body (a request as in application/json, whose input has "
                "parameters.binary_data_size instead of data); then the input's data: per image a 4-byte "
                "little-endian length and its bytes. Clients: tritonclient.http, kserve's InferenceRESTClient.",
            }},
        },
    }
}
_INFER_OK: dict[int | str, dict[str, Any]] = {200: {
    "description": "The requested outputs (default: all). Any output sent as binary data makes the body "
                   f"application/octet-stream: the JSON header ({HEADER_LENGTH} bytes), then each binary output.",
    "content": {_BINARY: {"schema": {"type": "string", "format": "binary"}}},
}}


def _served(runtime: Runtime, model_name: str, model_version: str | None) -> BundleManifest:
    """The manifest of the model the path names, if ready. Raises 503 (not ready) or 404 (another model)."""
    model, _ = runtime.require_ready()
    manifest = model.manifest
    if model_name != manifest.name:
        raise ModelNotFoundError(f"no model {model_name[:100]!r}: this server serves {manifest.name!r}")
    if model_version is not None and model_version != manifest.version:
        raise ModelNotFoundError(f"model {manifest.name!r} has no version {model_version[:100]!r}: it serves "
                                 f"version {manifest.version!r}")
    return manifest


# --- health and metadata --------------------------------------------------------------------------------
@router.get("/v2", response_model=ServerMetadataResponse)
async def server_metadata() -> ServerMetadataResponse:
    """Server metadata: name, version and the protocol extensions served."""
    return ServerMetadataResponse(name="deltagate", version=DELTAGATE_VERSION, extensions=EXTENSIONS)


@router.get("/v2/health/live", response_model=ServerLiveResponse,
            responses={503: {"model": ServerLiveResponse, "description": "The bundle failed to load."}})
async def server_live(runtime: RuntimeDep) -> JSONResponse:
    """Liveness (as /healthz): false only when the bundle failed to load."""
    live = runtime.phase is not Phase.FAILED
    return JSONResponse(ServerLiveResponse(live=live).model_dump(), status_code=200 if live else 503)


@router.get("/v2/health/ready", response_model=ServerReadyResponse,
            responses={503: {"model": ServerReadyResponse, "description": "Loading, failed or stopping."}})
async def server_ready(runtime: RuntimeDep) -> JSONResponse:
    """Readiness (as /readyz): true once the model is loaded and warmed up."""
    ready = runtime.phase is Phase.READY
    return _ready_response(ServerReadyResponse(ready=ready).model_dump(), ready, runtime)


def _ready_response(body: dict[str, Any], ready: bool, runtime: Runtime) -> JSONResponse:
    headers = None if ready else {"Retry-After": str(runtime.settings.retry_after_s)}
    return JSONResponse(body, status_code=200 if ready else 503, headers=headers)


_READY_RESPONSES: dict[int | str, dict[str, Any]] = {
    503: {"model": ModelReadyResponse, "description": "Loading, failed or stopping."}, **_errors(_NOT_FOUND)}
_METADATA_RESPONSES = _errors({401: "Missing or wrong API key (only when one is configured).", **_NOT_FOUND,
                               **_NOT_READY})


def _model_ready(runtime: Runtime, model_name: str, model_version: str | None) -> JSONResponse:
    if runtime.phase is Phase.READY:
        _served(runtime, model_name, model_version)
    ready = runtime.phase is Phase.READY
    return _ready_response(ModelReadyResponse(name=model_name, ready=ready).model_dump(), ready, runtime)


@router.get("/v2/models/{model_name}/ready", response_model=ModelReadyResponse, responses=_READY_RESPONSES)
async def model_ready(runtime: RuntimeDep, model_name: ModelName) -> JSONResponse:
    """Model readiness: true once it is loaded and warmed up (404: not the model served)."""
    return _model_ready(runtime, model_name, None)


@router.get("/v2/models/{model_name}/versions/{model_version}/ready", response_model=ModelReadyResponse,
            responses=_READY_RESPONSES)
async def model_version_ready(runtime: RuntimeDep, model_name: ModelName, model_version: ModelVersion) -> JSONResponse:
    """Model readiness of one version (404: not the model or version served)."""
    return _model_ready(runtime, model_name, model_version)


def _model_metadata(runtime: Runtime, model_name: str, model_version: str | None) -> ModelMetadataResponse:
    manifest = _served(runtime, model_name, model_version)
    inputs, outputs = tensor_metadata_of(len(manifest.classes))
    return ModelMetadataResponse(name=manifest.name, versions=[manifest.version], platform=PLATFORM,
                                 inputs=inputs, outputs=outputs)


@router.get("/v2/models/{model_name}", response_model=ModelMetadataResponse, responses=_METADATA_RESPONSES)
def model_metadata(runtime: RuntimeDep, _auth: ApiKeyDep, model_name: ModelName) -> ModelMetadataResponse:
    """Model metadata: the input (encoded images, BYTES [-1]) and every output with its datatype and shape."""
    return _model_metadata(runtime, model_name, None)


@router.get("/v2/models/{model_name}/versions/{model_version}", response_model=ModelMetadataResponse,
            responses=_METADATA_RESPONSES)
def model_version_metadata(runtime: RuntimeDep, _auth: ApiKeyDep, model_name: ModelName,
                           model_version: ModelVersion) -> ModelMetadataResponse:
    """Model metadata of one version."""
    return _model_metadata(runtime, model_name, model_version)


# --- inference ------------------------------------------------------------------------------------------
def _check_encoding(request: Request) -> None:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in ("", _JSON, _BINARY):
        raise UnsupportedMediaTypeError(f"content type {content_type!r} is not accepted; send {_JSON} (JSON "
                                        f"tensors) or {_BINARY} (binary tensor data, with {HEADER_LENGTH})")
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding != "identity":
        raise UnsupportedMediaTypeError(f"compressed requests (Content-Encoding: {encoding[:40]}) are not accepted: "
                                        "send the body uncompressed (images are compressed already)")


@router.post(INFER_PATHS[0], response_model=InferResponse, responses={**_INFER_OK, **_INFER_ERRORS},
             openapi_extra=_INFER_BODY)
async def infer(request: Request, runtime: RuntimeDep, _auth: ApiKeyDep, model_name: ModelName) -> Response:
    """Classify images (input 'image', BYTES [N]); outputs: label, confidence, ΔEnergy, gate score, is_ood,
    p-value, probabilities and the top-k. Out-of-distribution images have is_ood true: refuse their label."""
    return await _infer(request, runtime, model_name, None)


@router.post(INFER_PATHS[1], response_model=InferResponse, responses={**_INFER_OK, **_INFER_ERRORS},
             openapi_extra=_INFER_BODY)
async def infer_version(request: Request, runtime: RuntimeDep, _auth: ApiKeyDep, model_name: ModelName,
                        model_version: ModelVersion) -> Response:
    """Classify images with one version of the model (the bundle's own)."""
    return await _infer(request, runtime, model_name, model_version)


async def _vocabulary(runtime: Runtime, call: InferCall, deadline: float) -> Vocabulary | None:
    """The request's label set (parameters ``label_set``, ``labels``, ``prompts``), as ``/classify`` resolves it.

    A refusal keeps ``/classify``'s status (404 unknown set, 409 a bundle without a text side), except that
    a malformed request is the protocol's 400 (``/classify`` says 422), as every other refusal of a v2 request.
    """
    try:
        return await resolve_vocabulary(runtime, call.label_set, call.labels, call.prompts, deadline)
    except ServiceError as exc:
        if exc.status == 422:
            raise InvalidBodyError(exc.message, details=exc.details) from exc
        raise


async def _infer(request: Request, runtime: Runtime, model_name: str, model_version: str | None) -> Response:
    _, batcher = runtime.require_ready()
    # First, as /classify does (and the connection level's early answer, routes.classify): a spent budget is
    # answered 503 before anything of the request is looked at, its body not read.
    batcher.check_room()
    manifest = _served(runtime, model_name, model_version)
    s, state = runtime.settings, request.state
    deadline = getattr(state, "started_at", time.monotonic()) + s.request_timeout_s
    _check_encoding(request)
    body = await receive_bytes(request)  # no slot held while it arrives: a slow sender gets 408, holds nothing
    json_length = header_length(request.headers, len(body))
    with batcher.admit() as ticket:
        call = await asyncio.get_running_loop().run_in_executor(
            runtime.pool, parse_infer_request, body, json_length, manifest.name, s)
        del body  # the images hold what is needed of it
        ticket.grow(len(call.images))
        k = resolve_top_k(None, call.top_k, s.default_top_k)
        vocab = await _vocabulary(runtime, call, deadline)
        out = await classify_images(runtime, batcher, ticket, call.images, k, "fail", deadline, request.receive,
                                    vocabulary=vocab)
    record_classified(runtime, state.log_fields, len(call.images), out)
    tensors = output_tensors(out.results, out.probabilities, out.classes, call.outputs)
    calib = manifest.calibration if vocab is None else vocab.calibration
    assert calib is not None  # the runtime refuses bundles without calibration
    label_set = {} if vocab is None else {"label_set": vocab.label_set, "calibrated": vocab.calibrated}
    head = {"model_name": manifest.name, "model_version": manifest.version,
            **({"id": call.request_id} if call.request_id is not None else {}),
            "parameters": {"gate_score_name": calib.score, "threshold": calib.threshold, **label_set}}
    content, json_length = encode_response(head, tensors, [o.binary for o in call.outputs])
    if json_length is None:
        return Response(content, media_type=_JSON)
    return Response(content, media_type=_BINARY, headers={HEADER_LENGTH: str(json_length)})

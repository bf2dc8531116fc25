"""The request pipeline's named stages: receive → admit → parse → decode/preprocess → batch/forward → postprocess.

Each stage is a small function; the classify route only strings them together. Before the body
is read, a spent in-flight budget is answered 503 at once (:meth:`service.batcher.Batcher.check_room`).
The body is then received with no admission slot held (its size, time and memory limits are
:mod:`service.middleware`'s), and only then is the request admitted
(:meth:`service.batcher.Batcher.admit`), so a slow sender never holds any of the budget. JSON
parsing and base64 decoding run in the decode pool, never on the event loop, on a body whose
structure is bounded first (:func:`json_value_bound`, :data:`MAX_JSON_CONTAINERS`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pydantic_core
from fastapi import Request
from pydantic import ValidationError
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect
from starlette.types import Receive

from models.bundle import BundleManifest
from models.calibration import CalibrationRecord
from models.preprocess import (
    ImageDecodeError,
    ImageTooLargeError,
    PreprocessConfig,
    ShapeLimits,
    decode_and_preprocess,
)
from models.scoring_spec import FEATURES_NAME, gate_scores
from service.admission import Ticket
from service.batcher import Batcher, Row
from service.errors import (
    BadImageError,
    ClientGoneError,
    DeadlineError,
    InvalidBodyError,
    InvalidFieldError,
    PayloadTooLargeError,
    ServiceError,
    UnsupportedMediaTypeError,
    validation_details,
)
from service.metrics import BUNDLE_LABEL_SET
from service.schemas import TOP_K, ClassifyJSONRequest, ImageErrorEntry, ImageResult, OnError, TopKEntry
from service.settings import Settings

if TYPE_CHECKING:
    from service.device_input import DeviceInput
    from service.label_sets import Vocabulary
    from service.runtime import Runtime

__all__ = ["InputImage", "ReceivedBody", "ClassifyBody", "receive_body", "receive_bytes", "parse_images",
           "check_image_count", "json_value_bound", "MAX_JSON_CONTAINERS", "load_bounded_json", "resolve_top_k",
           "decode_images", "run_batched", "postprocess", "score_results", "resolve_vocabulary", "Classified",
           "classify_images", "record_classified"]

_MULTIPART, _JSON = "multipart/form-data", "application/json"


@dataclass(frozen=True)
class InputImage:
    data: bytes  # encoded image bytes as the client sent them
    filename: str | None = None


@dataclass(frozen=True)
class ReceivedBody:
    """A request body as received: a multipart form is parsed as it streams in; JSON is kept as bytes."""

    images: list[InputImage]  # the form's files (empty for JSON: parsed later, in the pool)
    top_k: int | None = None  # the form's top_k field
    json: bytes | None = None  # the JSON body, not parsed yet
    labels: list[str] | None = None  # the form's ad-hoc labels (field 'labels', repeatable)
    prompts: str | None = None  # the form's prompt mode of the labels


@dataclass(frozen=True)
class ClassifyBody:
    """What a classify request's body holds, parsed: images, ``top_k``, ad-hoc labels and their prompt mode."""

    images: list[InputImage]
    top_k: int | None = None  # the body's top_k (the query parameter wins)
    labels: list[str] | None = None  # ad-hoc labels (multipart field 'labels', repeatable; JSON "labels")
    prompts: str | None = None  # their prompt mode (the query parameter wins)


# --- stage 1: receive the body (no admission slot held) -----------------------------------------
async def receive_body(request: Request, settings: Settings) -> ReceivedBody:
    """Read the request body: a multipart form (parsed while it streams in) or JSON bytes.

    Reading holds no admission slot; the body's size, time and memory limits apply while it arrives
    (:class:`service.middleware.BodyLimitsMiddleware`: 413, 408, 503).

    Raises:
        UnsupportedMediaTypeError: neither multipart/form-data nor application/json.
        InvalidFieldError: malformed form fields.
        ClientGoneError: the client closed the connection before the body was complete.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == _MULTIPART:
        try:
            return await _read_multipart(request, settings)
        except ClientDisconnect as exc:
            raise _body_cut_short() from exc
    if content_type == _JSON:
        return ReceivedBody([], json=await receive_bytes(request))
    raise UnsupportedMediaTypeError(
        f"content type {content_type or '(none)'!r} is not accepted; send {_MULTIPART} "
        f"(field 'file', repeatable) or {_JSON} ({{\"images\": [<base64>, ...]}})"
    )


async def receive_bytes(request: Request) -> bytes:
    """The request body as bytes (under the body limits of :mod:`service.middleware`).

    Raises:
        ClientGoneError: the client closed the connection before the body was complete.
    """
    try:
        return await request.body()
    except ClientDisconnect as exc:
        raise _body_cut_short() from exc


def _body_cut_short() -> ClientGoneError:
    return ClientGoneError("the client closed the connection before its body was complete")


async def _read_multipart(request: Request, settings: Settings) -> ReceivedBody:
    images: list[InputImage] = []
    # Starlette refuses more than max_fields text fields (the labels) with a 400 before we see them.
    async with request.form(max_fields=settings.max_labels + 16) as form:  # closes the spooled files on exit
        for value in form.getlist("file"):
            if not isinstance(value, UploadFile):
                raise InvalidFieldError("field 'file' must be a file upload, not a text field")
            images.append(InputImage(await value.read(), value.filename))
        top_k = form.get("top_k")
        labels = form.getlist("labels")
        prompts = form.get("prompts")
        others = sorted({k for k, v in form.multi_items() if isinstance(v, UploadFile) and k != "file"})
    if not images and others:
        raise InvalidFieldError(
            f"no field 'file' in the form, but file field(s) {', '.join(repr(k) for k in others[:5])}: send each "
            "image as a field named 'file' (curl -F file=@image.png)", details=[{"loc": ["file"]}])
    if any(not isinstance(v, str) for v in labels):
        raise InvalidFieldError("field 'labels' must be text, not a file upload", details=[{"loc": ["labels"]}])
    if prompts is not None and not isinstance(prompts, str):
        raise InvalidFieldError("field 'prompts' must be text", details=[{"loc": ["prompts"]}])
    texts = [str(v) for v in labels] or None
    if top_k is None:
        return ReceivedBody(images, labels=texts, prompts=prompts)
    try:  # the JSON field's own type (schemas.TopK): one rule for both forms, never int() on raw text
        return ReceivedBody(images, TOP_K.validate_python(top_k), labels=texts, prompts=prompts)
    except ValidationError as exc:
        errors = [{**e, "loc": ["top_k", *e["loc"]]} for e in exc.errors(include_input=False)]
        details, message = validation_details(errors, settings.max_error_details)
        raise InvalidFieldError(message, details=details) from exc


# --- stage 2: parse (admitted: one provisional image, then the request's count) -----------------
async def parse_images(body: ReceivedBody, settings: Settings, ticket: Ticket, pool: Executor) -> ClassifyBody:
    """The images, the optional body ``top_k`` and ad-hoc ``labels``; the ticket grows to hold the images.

    Args:
        body: what :func:`receive_body` read.
        settings: limits.
        ticket: the request's admission; it holds one provisional image until the count is known.
        pool: where JSON is parsed and base64 decoded.

    Raises:
        OverloadedError: the images do not fit in the in-flight budget (nothing is decoded).
        InvalidFieldError: malformed fields, no image.
        InvalidBodyError: unparsable JSON.
        PayloadTooLargeError: more images than allowed.
    """
    parsed = ClassifyBody(body.images, body.top_k, body.labels, body.prompts)
    if body.json is not None:
        loop = asyncio.get_running_loop()
        parsed = await loop.run_in_executor(pool, _parse_json, body.json, settings)
    images = parsed.images
    if not images:
        raise InvalidFieldError("no image in the request: send at least one")
    check_image_count(len(images), settings)
    ticket.grow(len(images))
    return parsed


def check_image_count(count: int, settings: Settings) -> None:
    """One request's image count against ``max_images_per_request`` (every route, before any image is decoded).

    Raises:
        PayloadTooLargeError: more images than allowed.
    """
    if count > settings.max_images_per_request:
        raise PayloadTooLargeError(f"{count} images in one request; the limit is {settings.max_images_per_request}")


# Arrays and objects a JSON body may open: a valid request has one object and one or two arrays; the slack
# lets an invalid one (an unknown field holding a small object) reach validation and a 422 naming it.
MAX_JSON_CONTAINERS = 8


def json_value_bound(max_images: int, max_labels: int = 0) -> int:
    """The most commas a valid JSON request of ``max_images`` images and ``max_labels`` labels has (with slack).

    A valid request is ``{"images": [...], "top_k": k, "labels": [...], "prompts": p}``: a comma between
    images, one in each ``data:`` URL prefix, one before each other field and one between labels (a label
    may hold one more); base64 has no commas. In a container every element
    (or key-value member) but the first follows a comma, so commas and container openings (``[``,
    ``{``) bound what any parser would build; both are counted in a C-speed pass over the bytes.
    """
    return 2 * max_images + 2 * max_labels + 8


def _parse_json(body: bytes, settings: Settings) -> ClassifyBody:
    """JSON + base64 -> images, in the decode pool (~0.1 s for a 32 MB body would stall the loop).

    The work is bounded before anything is built: the counts of commas (:func:`json_value_bound`,
    413) and of opened containers (:data:`MAX_JSON_CONTAINERS`, 400), then pydantic-core's parser,
    which refuses numbers past Python's 4300-digit integer limit (400). So a 1M-item array, 100k-deep
    nesting or a 5000-digit number costs a scan of the bytes (the standard ``json`` module built
    the array, raised RecursionError and ValueError: 500s and a 115 MB 422 before).
    """
    payload = load_bounded_json(
        body, json_value_bound(settings.max_images_per_request, settings.max_labels), MAX_JSON_CONTAINERS,
        f"a request of at most {settings.max_images_per_request} images and {settings.max_labels} labels",
        "a request is one object with one array of images and one of labels",
    )
    if isinstance(payload, dict) and isinstance(payload.get("images"), list):  # before any base64 is decoded
        check_image_count(len(payload["images"]), settings)
    try:
        parsed = ClassifyJSONRequest.model_validate(payload)
    except ValidationError as exc:
        details, message = validation_details(exc.errors(include_input=False), settings.max_error_details)
        raise InvalidFieldError(message, details=details) from exc
    return ClassifyBody([InputImage(data) for data in parsed.images], parsed.top_k, parsed.labels, parsed.prompts)


def load_bounded_json(body: bytes, max_commas: int, max_containers: int, size: str, shape: str) -> Any:
    """Parse a JSON body whose structure is bounded first, in one C-speed pass over its bytes.

    Every array element or object member but the first follows a comma, so the commas and the opened
    containers (``[``, ``{``) bound what any parser would build; pydantic-core's parser then refuses numbers
    past Python's 4300-digit integer limit.

    Args:
        body: the JSON bytes.
        max_commas: the most commas a valid request has (with slack).
        max_containers: the most arrays and objects a valid request opens (with slack).
        size: what a valid request is, for the comma error ("a request of at most 16 images").
        shape: what a valid request looks like, for the container error.

    Raises:
        PayloadTooLargeError: more commas than ``max_commas`` (413).
        InvalidBodyError: more containers than ``max_containers``, or not valid JSON (400).
    """
    if (commas := body.count(b",")) > max_commas:
        raise PayloadTooLargeError(f"the JSON body has {commas} commas; {size} has at most {max_commas}")
    if (containers := body.count(b"[") + body.count(b"{")) > max_containers:
        raise InvalidBodyError(
            f"the JSON body opens {containers} arrays or objects (counting '[' and '{{'); {shape}, at most "
            f"{max_containers}"
        )
    try:
        return pydantic_core.from_json(body)
    except ValueError as exc:
        raise InvalidBodyError(f"the body is not valid JSON: {exc}") from exc


def resolve_top_k(query: int | None, body: int | None, default: int) -> int:
    """One rule for ``top_k``: the query parameter, else the body field (either form), else the setting.

    The rule is stated in the OpenAPI descriptions of both fields: a request that is valid by the
    schema (both given) is answered, never refused.
    """
    if query is not None:
        return query
    return body if body is not None else default


# --- stage 2: decode and preprocess, in the thread pool (models.preprocess.decode_and_preprocess) ---
async def decode_images(
    images: Sequence[InputImage], cfg: PreprocessConfig, max_pixels: int, pool: Executor, fast_decode: bool = True,
    device_input: DeviceInput | None = None, shape: ShapeLimits | None = None, first_index: int = 0,
) -> list[Any]:
    """Decode and preprocess every image off the event loop, exactly as the bundle says; one outcome per image.

    Args:
        images: the request's images.
        cfg: the bundle's preprocessing.
        max_pixels: pixel limit per image.
        pool: the decode pool.
        fast_decode: decode large JPEGs at reduced DCT scale (see :func:`models.preprocess.decode_for_model`).
        device_input: if given, the request's JPEGs are decoded and preprocessed on the engine's device in
            one pool job (:class:`service.device_input.DeviceInput`; other formats on the CPU); the result
            then holds device tensors beside NumPy arrays.
        shape: aspect-ratio and resized-size limits per image, checked from the header (the device input
            path has its own copy).
        first_index: the first image's index in what the caller numbers (errors name images by it).

    Returns:
        Per image, its pixels ((3, H, W) NumPy or a device tensor) or the :class:`ServiceError` that says why
        it cannot be classified (:class:`BadImageError` 400: not decodable, or its aspect ratio over the
        limit; :class:`PayloadTooLargeError` 413: too many pixels, before or after resizing; the message and
        ``details`` name the image's index and filename).
    """
    loop = asyncio.get_running_loop()
    outcomes: list[Any]
    if device_input is not None:
        outcomes = await loop.run_in_executor(pool, device_input.prepare, [im.data for im in images])
    else:
        jobs = [loop.run_in_executor(pool, decode_and_preprocess, im.data, cfg, max_pixels, fast_decode, shape)
                for im in images]
        outcomes = await asyncio.gather(*jobs, return_exceptions=True)
    for i, outcome in enumerate(outcomes):
        where = {"index": first_index + i, "filename": images[i].filename}
        named = f"image {first_index + i}" + (f" ({images[i].filename})" if images[i].filename else "")
        if isinstance(outcome, ImageTooLargeError):
            outcomes[i] = PayloadTooLargeError(f"{named}: {outcome}", details=where)
        elif isinstance(outcome, ImageDecodeError):
            outcomes[i] = BadImageError(f"{named}: {outcome}", details=where)
        elif isinstance(outcome, BaseException):
            raise outcome
    return list(outcomes)


# --- stage 3: batch and forward ----------------------------------------------------------------
async def _client_gone(receive: Receive) -> None:
    """Returns when the client disconnects (the body has been read, so only that can arrive)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def run_batched(
    receive: Receive | None, batcher: Batcher, ticket: Ticket, pixels: list[Any], deadline: float
) -> list[Row]:
    """Queue the images, await their rows; give up on deadline or when the client goes away.

    Args:
        receive: the request's ASGI ``receive`` (it tells when the client disconnects); None: no client.
        batcher: the running batcher.
        ticket: the request's admission (its images move to the queue).
        pixels: preprocessed images.
        deadline: ``time.monotonic()`` by which the request must be answered.

    Returns:
        One output row per image, in order.

    Raises:
        ServiceError: the batcher's errors (504 deadline, 500 inference, 503 shutdown) as they
            come, and 499 / 504 when the client leaves or the deadline passes here.
    """
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise DeadlineError("the request's deadline passed before it reached the queue")
    rows = asyncio.gather(*batcher.submit(pixels, remaining, ticket))
    gone: asyncio.Future[Any] = asyncio.ensure_future(
        _client_gone(receive) if receive is not None else asyncio.get_running_loop().create_future())
    waiting: set[asyncio.Future[Any]] = {rows, gone}
    try:
        done, _ = await asyncio.wait(waiting, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if rows not in done:
        rows.cancel()  # cancels the futures: still-queued images never reach a batch
        if gone in done:
            raise ClientGoneError("the client closed the connection")
        raise DeadlineError(f"no answer within the request timeout ({remaining:.1f} s left at queueing)")
    return rows.result()


# --- stage 4: postprocess ----------------------------------------------------------------------
def postprocess(
    rows: Sequence[Row], manifest: BundleManifest, top_k: int, filenames: Sequence[str | None],
    indexes: Sequence[int] | None = None,
) -> list[ImageResult]:
    """Rows of engine outputs -> labelled results with the OOD decision and p-value (the bundle's classes).

    ``indexes``: each row's image position in the request (default 0, 1, ...; other when some were skipped).
    """
    calib = manifest.calibration
    assert calib is not None  # the runtime refuses bundles without calibration
    outputs = {name: np.stack([np.asarray(r.outputs[name]) for r in rows]) for name in ("logits", "probs",
                                                                                        "delta_energy")}
    return score_results(outputs, manifest.classes, calib, manifest, top_k, filenames, indexes)


def score_results(
    outputs: dict[str, np.ndarray], classes: Sequence[str], calib: CalibrationRecord, manifest: BundleManifest,
    top_k: int, filenames: Sequence[str | None], indexes: Sequence[int] | None = None,
) -> list[ImageResult]:
    """Scores of N images over K classes -> results: the gate (the bundle's gate score against ``calib``),
    the label, top-k and p-value. The bundle's classes and a label set's go through here alike.

    Args:
        outputs: ``logits`` (N, K), ``probs`` (N, K), ``delta_energy`` (N,).
        classes: the K class names.
        calib: the gate's calibration (the bundle's, a named set's or the default rule's).
        manifest: the bundle (logit scale and score parameters of the gate score).
        top_k: entries of each top-k list.
        filenames: per image.
        indexes: each image's position in the request (default 0, 1, ...; other when some were skipped).
    """
    scores = gate_scores(outputs, calib.score, manifest.logit_scale, manifest.scores)  # (N,): the bundle's gate
    flags, p_values = calib.is_ood(scores), calib.p_value(scores)  # (N,), (N,)
    k = min(top_k, len(classes))
    gate = "ΔEnergy" if calib.score == "delta_energy" else calib.score
    results = []
    for i in range(len(scores)):
        probs = outputs["probs"][i]  # (K,)
        order = np.argsort(-probs, kind="stable")[:k]  # (k,)
        best, score, ood = int(order[0]), float(scores[i]), bool(flags[i])
        results.append(ImageResult(
            index=indexes[i] if indexes is not None else i, filename=filenames[i],
            decision="rejected_ood" if ood else "accepted",
            label=classes[best], class_index=best, confidence=float(probs[best]),
            top_k=[TopKEntry(label=classes[j], class_index=int(j), probability=float(probs[j])) for j in order],
            delta_energy=float(outputs["delta_energy"][i]), gate_score_name=calib.score, gate_score=score,
            threshold=calib.threshold, is_ood=ood, ood_p_value=float(p_values[i]),
            message=(f"rejected as out-of-distribution: {gate} {score:.4g} is below the threshold "
                     f"{calib.threshold:.4g}; the label is given for audit only") if ood else None,
        ))
    return results


# --- the classes: the bundle's, a named label set's or ad-hoc labels' ----------------------------
async def resolve_vocabulary(runtime: Runtime, label_set: str | None, labels: Sequence[str] | None,
                             prompts: str | None, deadline: float) -> Vocabulary | None:
    """The classes a request is answered with: None for the bundle's own, else a named set's or the ad-hoc
    labels' (docs/label-sets.md). ``POST /classify`` and the Open Inference Protocol's infer both ask here.

    New ad-hoc labels wait for the text graph in the pool: that wait counts against ``deadline``.

    Raises:
        InvalidFieldError: ``label_set`` and ``labels`` together, or ``prompts`` without ad-hoc labels (422).
        ServiceError: :meth:`Runtime.require_label_sets`' and :class:`service.label_sets.LabelSets`' refusals
            (no text side 409, unknown set 404, invalid labels 422).
        DeadlineError: the labels were not embedded by ``deadline`` (504).
    """
    if label_set is not None and labels is not None:
        raise InvalidFieldError("give either label_set (a named set) or labels (ad-hoc), not both",
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
    try:
        return await asyncio.wait_for(sets.ad_hoc(labels, prompts, runtime.pool),
                                      max(deadline - time.monotonic(), 0.0))
    except TimeoutError as exc:
        raise DeadlineError("the labels were not embedded within the request timeout") from exc


# --- the stages together -------------------------------------------------------------------------
@dataclass
class Classified:
    """A request's answers: one result per classified image, one error per image that could not be."""

    results: list[ImageResult]
    errors: list[ImageErrorEntry]
    rows: list[Row]  # the engine rows behind the results (their batch sizes are logged)
    probabilities: np.ndarray  # (N, K) float32: each result's softmax over ``classes``, in the order of results
    classes: list[str]  # the K classes answered with (the bundle's, or the label set's)
    vocabulary: Vocabulary | None = None  # the label set answered with (None: the bundle's classes)


async def classify_images(
    runtime: Runtime, batcher: Batcher, ticket: Ticket, images: Sequence[InputImage], top_k: int,
    on_error: OnError, deadline: float, receive: Receive | None = None, first_index: int = 0,
    vocabulary: Vocabulary | None = None,
) -> Classified:
    """Decode → batch and forward → postprocess: what ``POST /classify``, the Open Inference Protocol's infer
    and ``deltagate classify`` all run.

    Args:
        runtime: the ready runtime (settings, decode pool, device input, model).
        batcher: its batcher.
        ticket: the images' admission (held for every image).
        images: the images, in order.
        top_k: entries of each top-k list.
        on_error: ``fail``: the first image that cannot be decoded fails the whole call (its
            :class:`ServiceError`); ``skip``: such images are left out of ``results`` and listed in ``errors``.
        deadline: ``time.monotonic()`` by which the answers must be in.
        receive: the request's ASGI ``receive``, to stop waiting when the client leaves (None: no client).
        first_index: the index of ``images[0]`` in the results and errors (a caller classifying in parts).
        vocabulary: a label set (:func:`resolve_vocabulary`): its scores come from the batch's image features
            and the set's embeddings; None: the bundle's classes.

    Raises:
        ServiceError: an image :func:`decode_images` could not decode (``fail`` only), and :func:`run_batched`'s.
    """
    model = runtime.model
    assert model is not None
    s, manifest = runtime.settings, model.manifest
    classes = list(manifest.classes) if vocabulary is None else vocabulary.labels
    outcomes = await decode_images(images, manifest.preprocess, s.max_image_pixels, runtime.pool,
                                   s.fast_decode, runtime.device_input, runtime.shape_limits, first_index)
    failed = [o for o in outcomes if isinstance(o, ServiceError)]
    if failed and on_error == "fail":
        raise failed[0]
    good = [i for i, o in enumerate(outcomes) if not isinstance(o, ServiceError)]
    rows: list[Row] = []
    results: list[ImageResult] = []
    probabilities = np.zeros((0, len(classes)), np.float32)
    if good:
        rows = await run_batched(receive, batcher, ticket, [outcomes[i] for i in good], deadline)
        filenames, indexes = [images[i].filename for i in good], [first_index + i for i in good]
        if vocabulary is None:
            results = postprocess(rows, manifest, top_k, filenames, indexes)
            probabilities = np.stack([np.asarray(r.outputs["probs"], np.float32) for r in rows])
        else:
            sets = runtime.require_label_sets()
            features = np.stack([r.outputs[FEATURES_NAME] for r in rows])  # (N, D)
            outputs = await asyncio.get_running_loop().run_in_executor(runtime.pool, sets.score, vocabulary,
                                                                       features)
            results = score_results(outputs, vocabulary.labels, vocabulary.calibration, manifest, top_k,
                                    filenames, indexes)
            probabilities = np.asarray(outputs["probs"], np.float32)
    errors = [ImageErrorEntry(index=e.details["index"], filename=e.details["filename"], status=e.status, code=e.code,
                              message=e.message) for e in failed]
    return Classified(results, errors, rows, probabilities, classes, vocabulary)


# --- stage 5: record -----------------------------------------------------------------------------
def record_classified(runtime: Runtime, log_fields: dict[str, Any], num_images: int, out: Classified) -> None:
    """What every classifying route records: the image metrics, and the fields of its access log line.

    Args:
        runtime: its metrics.
        log_fields: the request's access-log fields (``request.state.log_fields``), updated here.
        num_images: images in the request (classified or not).
        out: what :func:`classify_images` answered.
    """
    results, vocab = out.results, out.vocabulary
    metric_set = runtime.label_sets.metric_label(vocab) if runtime.label_sets is not None else BUNDLE_LABEL_SET
    runtime.metrics.observe_images(metric_set, [r.label for r in results], [r.gate_score for r in results],
                                   [r.delta_energy for r in results], [r.is_ood for r in results])
    runtime.metrics.observe_image_errors([e.code for e in out.errors])
    log_fields.update({"images": num_images, "batch_sizes": [r.batch_size for r in out.rows],
                       "labels": [r.label for r in results], "is_ood": [r.is_ood for r in results],
                       "label_set": vocab.label_set if vocab is not None else None,
                       **({"failed": [e.index for e in out.errors]} if out.errors else {})})

"""Request and response models of the HTTP API (they also make the OpenAPI docs at /docs)."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, WithJsonSchema

from models.scoring_spec import score_param_specs

__all__ = [
    "Base64Image",
    "TopK",
    "TOP_K",
    "JsonInt",
    "PositiveJsonInt",
    "NonNegativeJsonInt",
    "JsonTopK",
    "ClassifyJSONRequest",
    "TopKEntry",
    "ImageResult",
    "ModelRef",
    "OnError",
    "ImageErrorEntry",
    "ClassifyResponse",
    "LabelSetSummary",
    "LabelSetInfo",
    "LabelSetList",
    "ErrorBody",
    "ErrorResponse",
    "HealthResponse",
    "ReadyResponse",
    "QuantileSummary",
    "ModelCheck",
    "ModelInfoResponse",
    "EngineChoiceInfo",
    "GraphCheckInfo",
]

# A data: URL prefix, case-insensitive as RFC 2397 has it; ASCII \w, as in the OpenAPI pattern below.
_DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+;base64,", re.IGNORECASE | re.ASCII)
# What _decode_base64 accepts, for the OpenAPI schema (clients and contract tests generate from it): an
# optional data: URL prefix (spelled case-insensitively: JSON Schema patterns have no flags), then base64 of
# at least one byte. An empty string is not an image, and the schema says so (the validator refuses it too).
_B64_TAIL = r"(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)"
BASE64_PATTERN = (
    r"^([dD][aA][tT][aA]:[A-Za-z0-9_.+-]+/[A-Za-z0-9_.+-]+;[bB][aA][sS][eE]64,)?"
    rf"(?:(?:[A-Za-z0-9+/]{{4}})+{_B64_TAIL}?|{_B64_TAIL})$"
)
EXAMPLE_PNG_BASE64 = (  # an 8x8 red PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAEklEQVR4nGP8z4AdMOEQH6QSAM1BAQ/oQeJvAAAAAElFTkSuQmCC"
)
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


def _decode_base64(value: Any) -> bytes:
    """Base64 (or a ``data:`` URL) -> bytes. URLs are refused: the service never fetches (SSRF)."""
    if not isinstance(value, str):
        raise ValueError("an image must be a base64 string")
    if _URL.match(value):
        raise ValueError("image URLs are not fetched; send the image bytes, base64-encoded")
    value = _DATA_URL.sub("", value, count=1)
    # BASE64_PATTERN, checked at C speed (its regex takes 1 s on 32 MB): groups of 4 characters, padding
    # only as the last one or two (b64decode alone accepts excess padding such as "AAAA====").
    pad = value.find("=")
    if len(value) % 4 or (pad != -1 and (pad < len(value) - 2 or value[pad:].strip("="))):
        raise ValueError("not valid base64: it comes in groups of 4 characters, with '=' padding only as the "
                         "last one or two")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not valid base64: {exc}") from exc
    if not data:
        raise ValueError("an image must not be empty")
    return data


Base64Image = Annotated[
    bytes,
    BeforeValidator(_decode_base64),
    WithJsonSchema({"type": "string", "contentEncoding": "base64", "pattern": BASE64_PATTERN, "minLength": 4,
                    "description": "Image bytes, base64 (a data: URL prefix is accepted); not empty."}),
]


# top_k in every form (JSON field, multipart field): pydantic's integer parsing, which refuses text
# that is not a number (int("²") raises) and numbers past Python's 4300-digit limit with a 422.
TopK = Annotated[int, Field(ge=1)]
TOP_K: TypeAdapter[int] = TypeAdapter(TopK)


# What a label must look like (service.label_sets checks it; the schema says as much as a JSON Schema can:
# labels that read the same after cleaning, or whose prompt does not fit the text context, are refused too).
LABEL_PATTERN = r"^[^\s\x00-\x1f\x7f](?:[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f])?$"
LABEL_ITEM_SCHEMA: dict[str, Any] = {"type": "string", "minLength": 1, "pattern": LABEL_PATTERN}


def _json_integer(value: Any) -> Any:
    """A JSON Schema integer is a number without a fraction (3, 3.0); pydantic's lax mode would also take the
    string "3" and true, which the schema calls invalid (a form field is text: :data:`TOP_K` parses it)."""
    if isinstance(value, str | bool):
        raise ValueError("should be an integer (a JSON number), not a string or a boolean")
    return value


# Integer fields of JSON bodies. The bounds come before the validator: pydantic states them in the JSON schema
# (minimum) only when no validator precedes them.
JsonInt = Annotated[int, BeforeValidator(_json_integer)]
PositiveJsonInt = Annotated[int, Field(ge=1), BeforeValidator(_json_integer)]
NonNegativeJsonInt = Annotated[int, Field(ge=0), BeforeValidator(_json_integer)]
JsonTopK = PositiveJsonInt


class ClassifyJSONRequest(BaseModel):
    """JSON form of ``POST /classify``."""

    model_config = ConfigDict(extra="forbid")

    images: list[Base64Image] = Field(min_length=1, description="One or more base64-encoded images.",
                                      examples=[[EXAMPLE_PNG_BASE64]])
    top_k: JsonTopK | None = Field(
        None,
        description="Entries in each top_k list (default: setting); the query parameter wins if both are given.",
    )
    labels: list[Annotated[str, WithJsonSchema(LABEL_ITEM_SCHEMA)]] | None = Field(
        None, min_length=2, json_schema_extra={"uniqueItems": True},
        description="Ad-hoc labels: classify against these instead of the bundle's classes (zero-shot, gated "
        "by the bundle's default rule; calibrated: false). Not together with the label_set query parameter.",
        examples=[["octagon", "pentagon", "hexagon"]],
    )
    prompts: Literal["learned", "zero-shot"] | None = Field(
        None, description="Prompt mode of ad-hoc labels (default: the bundle's); the query parameter wins if both "
        "are given.",
    )


class TopKEntry(BaseModel):
    label: str
    class_index: int
    probability: float = Field(description="Softmax probability.")


class ImageResult(BaseModel):
    """The classification of one image."""

    index: int = Field(description="Position of the image in the request.")
    filename: str | None = Field(None, description="Multipart filename, if any.")
    decision: Literal["accepted", "rejected_ood"] = Field(
        description="rejected_ood: the image looks out-of-distribution; do not trust the label."
    )
    label: str = Field(description="Predicted class (for audit only when decision is rejected_ood).")
    class_index: int
    confidence: float = Field(description="Softmax probability of the label.")
    top_k: list[TopKEntry]
    delta_energy: float = Field(description="ΔEnergy score; higher = more in-distribution.")
    gate_score_name: str = Field("delta_energy", description="The bundle's gating score (its calibration).")
    gate_score: float = Field(description="The gating score; higher = more in-distribution.")
    threshold: float = Field(description="Calibrated threshold; is_ood = gate_score < threshold.")
    is_ood: bool
    ood_p_value: float = Field(
        description="Fraction of ID calibration images with a gate score at or below this one's."
    )
    message: str | None = Field(None, description="Why the image was rejected, when it was.")


class ModelRef(BaseModel):
    name: str
    version: str


OnError = Literal["fail", "skip"]  # what one image that cannot be decoded does to its request (docs/service.md)


class ImageErrorEntry(BaseModel):
    """An image of the request that could not be classified (``on_error=skip``)."""

    index: int = Field(description="Position of the image in the request.")
    filename: str | None = Field(None, description="Multipart filename, if any.")
    status: int = Field(description="The status this image alone would get: 400 (not a readable image) or 413 "
                        "(too many pixels).")
    code: str = Field(description="invalid_image or payload_too_large.")
    message: str = Field(description="Why, naming the image.")


class ClassifyResponse(BaseModel):
    model: ModelRef
    request_id: str
    label_set: str | None = Field(
        None, description="The classes answered with: null for the bundle's own, a named label set's name, or "
        "'ad-hoc' for the request's labels."
    )
    calibrated: bool = Field(
        True, description="Whether the threshold was calibrated on ID images of these classes: true for the "
        "bundle's classes and for a named set made with examples; false for ad-hoc labels and named sets without "
        "examples (the bundle's default rule for K labels)."
    )
    num_images: int = Field(description="Images in the request (classified or not).")
    num_rejected_ood: int = Field(description="How many images were rejected as out-of-distribution.")
    results: list[ImageResult] = Field(description="One per classified image, in request order (see its index).")
    errors: list[ImageErrorEntry] = Field(
        default_factory=list,
        description="With on_error=skip: one per image that could not be classified, in request order; "
        "always empty with on_error=fail (such a request fails as a whole).",
    )


class LabelSetSummary(BaseModel):
    """A named label set as ``GET /label-sets`` lists it."""

    name: str
    labels: list[str]
    num_labels: int
    prompts: str
    calibrated: bool
    threshold: float
    target_tpr: float
    gate_score_name: str
    created_at: str
    source: str


class LabelSetInfo(LabelSetSummary):
    """One named label set in full (``GET /label-sets/{name}``, ``PUT /label-sets/{name}``)."""

    calibration: dict[str, Any] = Field(description="The gate's calibration record (without its quantile summary).")
    examples: dict[str, int] = Field(description="Example images per label the threshold was fitted on.")
    bundle: dict[str, str] = Field(description="The bundle the set was made for (name, version, fingerprint).")
    sha256: str


class LabelSetList(BaseModel):
    label_sets: list[LabelSetSummary]
    not_loaded: dict[str, str] = Field(description="Files in the directory that are not served, and why.")
    directory: str
    prompt_modes: list[str] = Field(description="Prompt modes of the bundle's text side.")
    default_prompts: str
    rule_label_counts: dict[str, list[int]] = Field(
        description="Per prompt mode: the fewest and most labels the default rule covers (ad-hoc sets, sets "
        "without examples)."
    )


class ErrorBody(BaseModel):
    status: int
    code: str = Field(description="Machine-readable error code, e.g. invalid_image, overloaded.")
    message: str = Field(description="What was wrong.")
    details: Any = None


class ErrorResponse(BaseModel):
    error: ErrorBody
    request_id: str | None = None


class HealthResponse(BaseModel):
    status: Literal["ok", "failed"]
    error: str | None = None


class ReadyResponse(BaseModel):
    status: Literal["ready", "loading", "failed", "stopping"]
    error: str | None = None


class QuantileSummary(BaseModel):
    """The calibration scores' distribution, as the bundle stores it."""

    levels: list[float] = Field(description="levels[i] is the fraction of calibration scores <= values[i].")
    values: list[float] = Field(description="Score quantiles, non-decreasing.")


class GraphCheckInfo(BaseModel):
    graph: str = Field(description="The reduced-precision graph: int8 or fp16.")
    passed: bool = Field(description="Whether engine=auto may serve it.")
    code: str = Field(description="passed, no_graph, cpu_only, cuda_only, no_threshold, no_parity_record, "
                      "other_provider, parity_failed, no_speed_record or not_faster.")
    detail: str


class EngineChoiceInfo(BaseModel):
    requested: str = Field(description="The engine setting: auto or an engine name.")
    engine: str = Field(description="The engine that serves.")
    reason: str = Field(description="Why, as a code (also the engine_reason label of deltagate_model_info): "
                        "requested, int8_passed, int8_parity_failed, int8_not_faster, no_reduced_graph, ...")
    detail: str = Field(description="Why, in a sentence with the recorded numbers.")
    checks: list[GraphCheckInfo] = Field(
        default_factory=list, description="engine=auto: the verdict on each reduced-precision graph of the bundle."
    )

class ModelCheck(BaseModel):
    """One finding of the guard against a useless model (models/quality.py), from the bundle's records."""

    name: str = Field(description="weights, accuracy or gate.")
    ok: bool
    message: str


class ModelInfoResponse(BaseModel):
    name: str
    version: str
    description: str | None = Field(None, description="What the model knows, in the bundle's words.")
    created_at: str
    architecture: str
    classes: list[str]
    num_classes: int
    threshold: float
    target_tpr: float
    calibration: dict[str, Any] = Field(description="Calibration statistics (without the quantile summary).")
    scores: dict[str, Any] = Field(
        description="Score parameters as the bundle's manifest holds them, each named after its score: "
        + ", ".join(s.name for s in score_param_specs()) + "."
    )
    logit_scale: float
    preprocess: dict[str, Any]
    files: dict[str, dict[str, Any]] = Field(description="Bundle files with SHA-256 and size.")
    engine: str
    device: str = Field(description="Where the forward runs (every instance's value, ';'-joined, if they differ).")
    precision: str
    engine_choice: EngineChoiceInfo | None = Field(
        None, description="Which engine serves and why (engine=auto: the fastest graph whose recorded parity passes)."
    )
    instances: list[dict[str, str]] = Field(
        default_factory=list,
        description="What really runs, per engine instance: engine, device, precision, providers, intra_op_threads.",
    )
    batching: dict[str, Any]
    calibration_quantiles: QuantileSummary | None = Field(
        None, description="Quantile summary of the ID calibration scores (the threshold's distribution)."
    )
    evaluation: dict[str, Any] | None = Field(
        None, description="The bundle's evaluation summary (written by `deltagate evaluate`), if any."
    )
    checks: list[ModelCheck] = Field(
        default_factory=list, description="The guard's findings from the bundle's records: random weights, "
        "accuracy near chance, a gate that separates nothing (ok false = a warning)."
    )

"""Request and response models of the HTTP API (they also make the OpenAPI docs at /docs)."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, WithJsonSchema

__all__ = [
    "Base64Image",
    "TopK",
    "TOP_K",
    "ClassifyJSONRequest",
    "TopKEntry",
    "ImageResult",
    "ModelRef",
    "ClassifyResponse",
    "LabelSetSummary",
    "LabelSetInfo",
    "LabelSetList",
    "ErrorBody",
    "ErrorResponse",
    "HealthResponse",
    "ReadyResponse",
    "QuantileSummary",
    "ModelInfoResponse",
]

_DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+;base64,", re.IGNORECASE)
# What _decode_base64 accepts, for the OpenAPI schema (clients and contract tests generate from it).
BASE64_PATTERN = r"^(data:[\w.+-]+/[\w.+-]+;base64,)?(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
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
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not valid base64: {exc}") from exc


Base64Image = Annotated[
    bytes,
    BeforeValidator(_decode_base64),
    WithJsonSchema({"type": "string", "contentEncoding": "base64", "pattern": BASE64_PATTERN,
                    "description": "Image bytes, base64 (a data: URL prefix is accepted)."}),
]


# top_k in every form (JSON field, multipart field): pydantic's integer parsing, which refuses text
# that is not a number (int("²") raises) and numbers past Python's 4300-digit limit with a 422.
TopK = Annotated[int, Field(ge=1)]
TOP_K: TypeAdapter[int] = TypeAdapter(TopK)


# What a label must look like (service.label_sets checks it; the schema says as much as a JSON Schema can:
# labels that read the same after cleaning, or whose prompt does not fit the text context, are refused too).
LABEL_PATTERN = r"^[^\s\x00-\x1f\x7f](?:[^\x00-\x1f\x7f]*[^\s\x00-\x1f\x7f])?$"
LABEL_ITEM_SCHEMA: dict[str, Any] = {"type": "string", "minLength": 1, "pattern": LABEL_PATTERN}


class ClassifyJSONRequest(BaseModel):
    """JSON form of ``POST /classify``."""

    model_config = ConfigDict(extra="forbid")

    images: list[Base64Image] = Field(min_length=1, description="One or more base64-encoded images.",
                                      examples=[[EXAMPLE_PNG_BASE64]])
    top_k: TopK | None = Field(
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
    num_images: int
    num_rejected_ood: int = Field(description="How many images were rejected as out-of-distribution.")
    results: list[ImageResult]


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


class ModelInfoResponse(BaseModel):
    name: str
    version: str
    created_at: str
    architecture: str
    classes: list[str]
    num_classes: int
    threshold: float
    target_tpr: float
    calibration: dict[str, Any] = Field(description="Calibration statistics (without the quantile summary).")
    scores: dict[str, Any] = Field(
        description="Score parameters: ΔEnergy's top_c, reset, reset_logit and temperature, energy's temperature, "
        "MCM's tau."
    )
    logit_scale: float
    preprocess: dict[str, Any]
    files: dict[str, dict[str, Any]] = Field(description="Bundle files with SHA-256 and size.")
    engine: str
    device: str = Field(description="Where the forward runs (every instance's value, ';'-joined, if they differ).")
    precision: str
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

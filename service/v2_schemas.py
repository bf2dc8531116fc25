"""Open Inference Protocol (KServe v2) over REST: request, response and metadata models of the ``/v2`` routes.

The protocol is KServe's (kserve/open-inference-protocol, ``specification/protocol/inference_rest.md``): Triton,
KServe, Seldon MLServer and TorchServe speak it, and so do their clients. Two of Triton's extensions are
served too (triton-inference-server/server, protocol documents ``extension_binary_data.md`` and
``extension_classification.md``): binary tensor data (an ``Inference-Header-Content-Length`` header, the JSON
header, then each binary tensor) and classification (an output's top-n as ``"value:index[:label]"`` strings).

deltagate serves one model, its bundle, with one input and the outputs of :data:`OUTPUTS`. The models here are
what the service accepts, no wider: an unknown field, input, output or parameter is refused (400), never ignored.
They also make the OpenAPI document, where the image limits are added from the settings (:mod:`service.openapi`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Discriminator, Field, StrictBool, StrictStr, Tag

from service.schemas import EXAMPLE_PNG_BASE64, Base64Image, JsonTopK, NonNegativeJsonInt, PositiveJsonInt

__all__ = [
    "V2_INPUT",
    "OUTPUTS",
    "NumericOutputName",
    "OtherOutputName",
    "EXTENSIONS",
    "TensorMetadata",
    "ServerMetadataResponse",
    "ModelMetadataResponse",
    "ServerLiveResponse",
    "ServerReadyResponse",
    "ModelReadyResponse",
    "V2ErrorResponse",
    "InferParameters",
    "BinaryInputParameters",
    "JsonInferInput",
    "BinaryInferInput",
    "OutputParameters",
    "NumericOutputParameters",
    "RequestedOutput",
    "RequestedNumericOutput",
    "JsonInferRequest",
    "BinaryInferRequest",
    "ResponseOutput",
    "InferResponse",
]

V2_INPUT = "image"  # the one input: BYTES, shape [N], each element an encoded image (PNG, JPEG, ...)
EXTENSIONS = ["binary_tensor_data", "classification"]  # Triton's names for them, in the server metadata

# Every output: name -> (datatype, per-image dimension: "" a scalar, "K" one per class, "k" one per top-k entry).
OUTPUTS: dict[str, tuple[str, str]] = {
    "label": ("BYTES", ""),  # the predicted class (for audit only when is_ood)
    "class_index": ("INT64", ""),
    "confidence": ("FP32", ""),  # softmax probability of the label
    "delta_energy": ("FP32", ""),  # ΔEnergy, higher = more in-distribution
    "gate_score": ("FP32", ""),  # the score the bundle gates on (ΔEnergy unless calibrated on another)
    "is_ood": ("BOOL", ""),  # gate_score < threshold: refuse the label
    "ood_p_value": ("FP32", ""),  # fraction of ID calibration scores at or below this one
    "probabilities": ("FP32", "K"),  # softmax over the classes (the classification extension labels it)
    "top_k_labels": ("BYTES", "k"),
    "top_k_probabilities": ("FP32", "k"),
    "top_k_class_indices": ("INT64", "k"),
}
# The classification extension ranks numbers: it applies to the FP32 and INT64 outputs only.
NumericOutputName = Literal["class_index", "confidence", "delta_energy", "gate_score", "ood_p_value",
                            "probabilities", "top_k_probabilities", "top_k_class_indices"]
OtherOutputName = Literal["label", "is_ood", "top_k_labels"]
assert {*get_args(NumericOutputName), *get_args(OtherOutputName)} == set(OUTPUTS)
assert all(OUTPUTS[n][0] in ("FP32", "INT64") for n in get_args(NumericOutputName))

# Unknown fields refused; booleans are StrictBool and integers JsonInt: 0 is not false and "3" is not 3 (what
# the schema says is what passes).
_STRICT = ConfigDict(extra="forbid")


# --- metadata and health ------------------------------------------------------------------------------
class TensorMetadata(BaseModel):
    name: str
    datatype: str = Field(description="BOOL, INT64, FP32 or BYTES.")
    shape: list[int] = Field(description="-1: a variable dimension (the batch, the top-k).")


class ServerMetadataResponse(BaseModel):
    name: str
    version: str
    extensions: list[str]


class ModelMetadataResponse(BaseModel):
    name: str = Field(description="The bundle's name: the one model this server serves.")
    versions: list[str] = Field(description="The bundle's version (the only one served).")
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerLiveResponse(BaseModel):
    live: bool


class ServerReadyResponse(BaseModel):
    ready: bool


class ModelReadyResponse(BaseModel):
    name: str
    ready: bool


class V2ErrorResponse(BaseModel):
    """The protocol's error: one string (the status code says which kind)."""

    error: str


# --- inference request ----------------------------------------------------------------------------------
class InferParameters(BaseModel):
    model_config = _STRICT

    top_k: JsonTopK | None = Field(None, description="Entries of the top_k_* outputs (default: the service's setting; "
                               "clamped to the number of classes).")
    binary_data_output: StrictBool | None = Field(
        None, description="Binary tensor data extension: every output as binary data, unless the output says "
        "otherwise.")
    # Label sets (docs/label-sets.md). The protocol's parameter values are strings, numbers or booleans, so
    # ad-hoc labels travel as one comma-separated string, as in `deltagate label-set create --labels a,b,c`.
    label_set: StrictStr | None = Field(
        None, min_length=1, description="Classify against this named label set (GET /label-sets) instead of the "
        "bundle's classes, as POST /classify?label_set=NAME does.")
    labels: StrictStr | None = Field(
        None, min_length=1, description="Ad-hoc labels, comma-separated ('octagon,pentagon,hexagon'): classify "
        "against these (gated by the bundle's default rule; calibrated: false). Not together with label_set.")
    prompts: Literal["learned", "zero-shot"] | None = Field(
        None, description="Prompt mode of ad-hoc labels (default: the bundle's).")


class BinaryInputParameters(BaseModel):
    model_config = _STRICT

    binary_data_size: NonNegativeJsonInt = Field(description="Bytes of this input's data after the JSON header: each "
                                  "element is a 4-byte little-endian length, then the image's bytes.")


class _InferInputBase(BaseModel):
    model_config = _STRICT

    name: Literal["image"]
    shape: list[PositiveJsonInt] = Field(min_length=1, max_length=1,
                                                     description="[N]: the number of images.")
    datatype: Literal["BYTES"]


class JsonInferInput(_InferInputBase):
    """The input with its data in the JSON (base64 strings, as JSON cannot hold raw bytes)."""

    data: list[Base64Image] = Field(min_length=1, description="N images, base64 (a data: URL prefix is accepted).")


class BinaryInferInput(_InferInputBase):
    """The input with its data after the JSON header (binary tensor data extension)."""

    parameters: BinaryInputParameters


class OutputParameters(BaseModel):
    model_config = _STRICT

    binary_data: StrictBool | None = Field(None, description="Binary tensor data extension: this output as binary "
                                           "data.")


class NumericOutputParameters(OutputParameters):
    classification: PositiveJsonInt | None = Field(
        None, description="Classification extension: the top-n values of each image's row as BYTES "
        "'value:index' strings (':label' added for probabilities), n clamped to the row's length.")


class RequestedOutput(BaseModel):
    model_config = _STRICT

    name: OtherOutputName
    parameters: OutputParameters | None = None


class RequestedNumericOutput(BaseModel):
    model_config = _STRICT

    name: NumericOutputName
    parameters: NumericOutputParameters | None = None


def _output_kind(value: Any) -> str | None:
    name = value.get("name") if isinstance(value, dict) else getattr(value, "name", None)
    return "numeric" if name in get_args(NumericOutputName) else "other" if name in get_args(OtherOutputName) else None


# One requested output: its name says which model applies (only numbers have the classification parameter).
AnyRequestedOutput = Annotated[
    Annotated[RequestedNumericOutput, Tag("numeric")] | Annotated[RequestedOutput, Tag("other")],
    Discriminator(_output_kind, custom_error_type="unknown_output",
                  custom_error_message=f"an output of this model: {', '.join(OUTPUTS)}"),
]


class _InferRequestBase(BaseModel):
    model_config = _STRICT

    id: StrictStr | None = Field(None, max_length=256, description="Echoed in the response.")
    model_name: StrictStr | None = Field(None, description="If given, the model of the path (some clients send it).")
    parameters: InferParameters | None = None
    outputs: list[AnyRequestedOutput] | None = Field(
        None, max_length=len(OUTPUTS), description="The outputs to return, in this order (default: all).")


class JsonInferRequest(_InferRequestBase):
    """``POST /v2/models/{model_name}/infer`` with ``Content-Type: application/json``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "id": "42", "parameters": {"top_k": 3},
        "inputs": [{"name": V2_INPUT, "shape": [1], "datatype": "BYTES", "data": [EXAMPLE_PNG_BASE64]}],
        "outputs": [{"name": "label"}, {"name": "delta_energy"}, {"name": "is_ood"}],
    }]})

    inputs: list[JsonInferInput] = Field(min_length=1, max_length=1, description="The one input, 'image'.")


class BinaryInferRequest(_InferRequestBase):
    """The JSON header of a request in the binary tensor data extension (``Inference-Header-Content-Length``)."""

    inputs: list[JsonInferInput | BinaryInferInput] = Field(min_length=1, max_length=1)


# --- inference response -------------------------------------------------------------------------------
class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, int] | None = Field(None, description="binary_data_size, when the data follows the "
                                              "JSON header (binary tensor data extension).")
    data: list[str | int | float | bool] | None = Field(None, description="The tensor, flattened in row-major "
                                                        "order (absent when sent as binary data).")


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = Field(None, description="The request's id, if it had one.")
    parameters: dict[str, str | bool | float] = Field(
        description="gate_score_name and threshold: is_ood is gate_score < threshold; with a label set (request "
        "parameter label_set or labels) also label_set (its name, or 'ad-hoc') and calibrated (false: the bundle's "
        "default rule for K labels), and the threshold is the set's.")
    outputs: list[ResponseOutput]

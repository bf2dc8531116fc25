"""Open Inference Protocol tensors: a v2 inference request -> images, classified images -> output tensors.

Pure functions, run in the decode pool (parsing) or on the event loop (encoding a few hundred numbers); the
models are :mod:`service.v2_schemas`. A request is JSON, or (Triton's binary tensor data extension) a JSON
header of ``Inference-Header-Content-Length`` bytes followed by the binary data of each input that says
``binary_data_size``; a BYTES element there is a 4-byte little-endian length and its bytes. Its structure
is bounded before it is parsed, as ``POST /classify``'s JSON is (:func:`service.pipeline.load_bounded_json`).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from service.errors import InvalidBodyError, validation_details
from service.pipeline import InputImage, check_image_count, load_bounded_json
from service.schemas import ImageResult
from service.settings import Settings
from service.v2_schemas import (
    OUTPUTS,
    V2_INPUT,
    BinaryInferInput,
    BinaryInferRequest,
    JsonInferRequest,
    RequestedNumericOutput,
    RequestedOutput,
    TensorMetadata,
)

__all__ = ["HEADER_LENGTH", "Requested", "InferCall", "Tensor", "header_length", "parse_infer_request",
           "tensor_metadata", "output_tensors", "encode_response", "MAX_V2_CONTAINERS", "v2_comma_bound"]

HEADER_LENGTH = "Inference-Header-Content-Length"
_LENGTH = struct.Struct("<I")  # a BYTES element's length prefix
# Arrays and objects of a valid request: the request, its parameters, inputs, the input, its shape, its
# parameters and its data, the outputs, and an object and parameters per requested output; 2 slack.
MAX_V2_CONTAINERS = 8 + 2 * len(OUTPUTS) + 2
_NUMPY = {"FP32": "<f4", "INT64": "<i8"}


def v2_comma_bound(max_images: int, max_labels: int = 0) -> int:
    """The most commas a valid v2 JSON request of ``max_images`` images and ``max_labels`` ad-hoc labels has (with
    slack): two per image (between elements, and in a data: URL prefix), four per requested output, two per
    label (between labels in the ``labels`` parameter, and one a label may hold), and the request's own fields."""
    return 2 * max_images + 4 * len(OUTPUTS) + 2 * max_labels + 16


@dataclass(frozen=True)
class Requested:
    """An output to return: binary or JSON, and the classification extension's count (0: the tensor itself)."""

    name: str
    binary: bool
    classification: int = 0


@dataclass(frozen=True)
class InferCall:
    """What a v2 inference request asks."""

    images: list[InputImage]
    top_k: int | None
    outputs: list[Requested]
    request_id: str | None
    label_set: str | None = None  # the parameter label_set: a named set
    labels: list[str] | None = None  # the parameter labels, split at its commas: ad-hoc labels
    prompts: str | None = None  # their prompt mode


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str
    values: np.ndarray  # (N,) or (N, D); BYTES: an object array of bytes

    @property
    def shape(self) -> list[int]:
        return list(self.values.shape)

    def binary(self) -> bytes:
        """The tensor's data as the binary tensor data extension sends it (little-endian, row-major)."""
        if self.datatype == "BYTES":
            return b"".join(_LENGTH.pack(len(b)) + b for b in self.values.ravel())
        if self.datatype == "BOOL":
            return self.values.astype(np.uint8).tobytes()
        return np.ascontiguousarray(self.values, _NUMPY[self.datatype]).tobytes()

    def json_data(self) -> list[Any]:
        """The tensor's data as JSON values, flattened row-major."""
        if self.datatype == "BYTES":
            return [b.decode("utf-8") for b in self.values.ravel()]
        return self.values.ravel().tolist()  # float32 -> float is exact; int64 -> int; bool -> bool


def header_length(headers: Mapping[str, str], body_length: int) -> int | None:
    """``Inference-Header-Content-Length``: the JSON header's length in a binary request (None: all JSON).

    Raises:
        InvalidBodyError: not a number, or past the body.
    """
    value = headers.get(HEADER_LENGTH)
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()) or len(value) > 20 or not 0 < int(value) <= body_length:
        raise InvalidBodyError(f"{HEADER_LENGTH} must be the JSON header's length in bytes, between 1 and the "
                             f"body's {body_length}; got {value[:40]!r}")
    return int(value)


def _split_bytes(raw: bytes, count: int) -> list[bytes]:
    """``count`` BYTES elements, each a 4-byte little-endian length and its bytes, filling ``raw`` exactly."""
    elements, at = [], 0
    for i in range(count):
        if at + 4 > len(raw):
            raise InvalidBodyError(f"the binary data of input '{V2_INPUT}' ends before element {i} of {count}")
        (size,) = _LENGTH.unpack_from(raw, at)
        if at + 4 + size > len(raw):
            raise InvalidBodyError(f"element {i} of input '{V2_INPUT}' says {size} bytes, but only "
                                 f"{len(raw) - at - 4} follow")
        elements.append(raw[at + 4 : at + 4 + size])
        at += 4 + size
    if at != len(raw):
        raise InvalidBodyError(f"input '{V2_INPUT}' has {len(raw) - at} bytes of binary data after its {count} "
                               "elements")
    return elements


def _precheck_counts(payload: Any, settings: Settings) -> None:
    """The image count of a parsed body against the limit, before any base64 is decoded (413)."""
    inputs = payload.get("inputs") if isinstance(payload, dict) else None
    for item in inputs if isinstance(inputs, list) else []:
        if not isinstance(item, dict):
            continue
        shape, data = item.get("shape"), item.get("data")
        if isinstance(shape, list) and shape and all(type(d) is int for d in shape):
            check_image_count(int(np.prod(shape, dtype=object)), settings)
        if isinstance(data, list):
            check_image_count(len(data), settings)


def parse_infer_request(body: bytes, json_length: int | None, model_name: str, settings: Settings) -> InferCall:
    """A v2 inference request -> the images, ``top_k``, outputs and label set (parameters) it asks for.

    Args:
        body: the request body.
        json_length: ``Inference-Header-Content-Length`` (:func:`header_length`); None: the body is all JSON.
        model_name: the model the path names (a ``model_name`` field in the body must agree).
        settings: limits.

    Raises:
        PayloadTooLargeError: more images than ``max_images_per_request``, or a JSON header with more
            commas than a request of that many images has (413).
        InvalidBodyError: anything else the protocol or this model refuses (400).
    """
    header, binary = (body, b"") if json_length is None else (body[:json_length], body[json_length:])
    payload = load_bounded_json(header, v2_comma_bound(settings.max_images_per_request, settings.max_labels),
                                MAX_V2_CONTAINERS,
                                f"a request of at most {settings.max_images_per_request} images and "
                                f"{settings.max_labels} labels",
                                "a request is one object with one input and its requested outputs")
    _precheck_counts(payload, settings)
    model = JsonInferRequest if json_length is None else BinaryInferRequest
    try:
        request = model.model_validate(payload)
    except ValidationError as exc:
        details, message = validation_details(exc.errors(include_input=False), settings.max_error_details)
        raise InvalidBodyError(message, details=details) from exc
    if request.model_name is not None and request.model_name != model_name:
        raise InvalidBodyError(f"the body names model {request.model_name[:100]!r}, the path {model_name!r}")
    (tensor,) = request.inputs
    count = tensor.shape[0]
    check_image_count(count, settings)  # again: a shape of 1e9 (a float) passed the pre-check
    if isinstance(tensor, BinaryInferInput):
        size = tensor.parameters.binary_data_size
        if size != len(binary):
            raise InvalidBodyError(f"input '{V2_INPUT}' says binary_data_size {size}, but {len(binary)} bytes follow "
                                 f"the {json_length}-byte JSON header")
        data = _split_bytes(binary, count)
    else:
        if binary:
            raise InvalidBodyError(f"{len(binary)} bytes follow the JSON header, but no input has binary_data_size")
        data = list(tensor.data)
        if len(data) != count:
            raise InvalidBodyError(f"input '{V2_INPUT}' has shape [{count}] but {len(data)} elements")
    params = request.parameters
    binary_default = bool(params and params.binary_data_output)
    asked: Sequence[RequestedNumericOutput | RequestedOutput] = request.outputs or []
    outputs = [Requested(o.name, binary_default if o.parameters is None or o.parameters.binary_data is None
                         else o.parameters.binary_data,
                         getattr(o.parameters, "classification", None) or 0) for o in asked]
    if request.outputs is None:
        outputs = [Requested(name, binary_default) for name in OUTPUTS]
    if params is None:
        return InferCall([InputImage(d) for d in data], None, outputs, request.id)
    labels = params.labels.split(",") if params.labels is not None else None  # checked as /classify's labels
    return InferCall([InputImage(d) for d in data], params.top_k, outputs, request.id, params.label_set, labels,
                     params.prompts)


def tensor_metadata(num_classes: int) -> tuple[list[TensorMetadata], list[TensorMetadata]]:
    """The model's inputs and outputs as the metadata endpoint describes them (-1: variable)."""
    per_image = {"": [], "K": [num_classes], "k": [-1]}
    inputs = [TensorMetadata(name=V2_INPUT, datatype="BYTES", shape=[-1])]
    outputs = [TensorMetadata(name=name, datatype=dtype, shape=[-1, *per_image[dims]])
               for name, (dtype, dims) in OUTPUTS.items()]
    return inputs, outputs


def _bytes(rows: Sequence[Any]) -> np.ndarray:
    """Text as a BYTES tensor: an object array of UTF-8 bytes of the same shape."""
    return np.array(rows, dtype=object)


def _columns(results: Sequence[ImageResult], probabilities: np.ndarray) -> dict[str, np.ndarray]:
    """Every output's values for N images: (N,) or (N, D) arrays."""
    return {
        "label": _bytes([r.label.encode() for r in results]),
        "class_index": np.array([r.class_index for r in results], np.int64),
        "confidence": np.array([r.confidence for r in results], np.float32),
        "delta_energy": np.array([r.delta_energy for r in results], np.float32),
        "gate_score": np.array([r.gate_score for r in results], np.float32),
        "is_ood": np.array([r.is_ood for r in results], bool),
        "ood_p_value": np.array([r.ood_p_value for r in results], np.float32),
        "probabilities": probabilities.astype(np.float32),  # (N, K)
        "top_k_labels": _bytes([[e.label.encode() for e in r.top_k] for r in results]),  # (N, k)
        "top_k_probabilities": np.array([[e.probability for e in r.top_k] for r in results], np.float32),
        "top_k_class_indices": np.array([[e.class_index for e in r.top_k] for r in results], np.int64),
    }


def _classification(name: str, values: np.ndarray, count: int, classes: Sequence[str]) -> Tensor:
    """The classification extension: each row's ``count`` largest values as ``"value:index[:label]"``."""
    rows = values.reshape(len(values), -1)  # (N, D): a scalar output is a row of one
    n = min(count, rows.shape[1])
    labelled = name == "probabilities"  # its index is a class index
    out = [[(f"{row[j]!s}:{j}" + (f":{classes[j]}" if labelled else "")).encode()
            for j in np.argsort(-row, kind="stable")[:n]] for row in rows]
    return Tensor(name, "BYTES", _bytes(out).reshape(len(rows), n))


def output_tensors(results: Sequence[ImageResult], probabilities: np.ndarray, classes: Sequence[str],
                   requested: Sequence[Requested]) -> list[Tensor]:
    """The requested outputs of N classified images, in the requested order.

    Args:
        results: one per image, in request order (the all-or-nothing ``on_error=fail`` answer).
        probabilities: (N, K) softmax over the classes, same order.
        classes: the K class names.
        requested: what to return.
    """
    columns = _columns(results, probabilities)
    return [_classification(r.name, columns[r.name], r.classification, classes) if r.classification
            else Tensor(r.name, OUTPUTS[r.name][0], columns[r.name]) for r in requested]


def encode_response(
    head: dict[str, Any], tensors: Sequence[Tensor], binary: Sequence[bool]
) -> tuple[bytes, int | None]:
    """The response body: JSON, or (any output binary) the JSON header then each binary output's data.

    Args:
        head: the response's fields other than ``outputs`` (model_name, model_version, id, parameters).
        tensors: the outputs.
        binary: per output, whether it goes as binary data.

    Returns:
        The body, and the JSON header's length when binary data follows (``Inference-Header-Content-Length``).
    """
    outputs, blobs = [], []
    for tensor, as_binary in zip(tensors, binary, strict=True):
        entry: dict[str, Any] = {"name": tensor.name, "shape": tensor.shape, "datatype": tensor.datatype}
        if as_binary:
            blob = tensor.binary()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = tensor.json_data()
        outputs.append(entry)
    header = json.dumps({**head, "outputs": outputs}, ensure_ascii=False).encode()
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)


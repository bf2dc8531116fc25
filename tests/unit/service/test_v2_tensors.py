"""The v2 tensor codec against Triton's own (de)serializers: BYTES elements, FP32, INT64 and BOOL as the binary
tensor data extension has them; the classification extension's strings; the JSON header's structure bound."""

from __future__ import annotations

import numpy as np
import pytest

from service.errors import InvalidBodyError
from service.schemas import ImageResult, TopKEntry
from service.settings import Settings
from service.v2_schemas import OUTPUTS
from service.v2_tensors import Requested, _split_bytes, output_tensors, parse_infer_request

pytestmark = pytest.mark.unit

utils = pytest.importorskip("tritonclient.utils", reason="tritonclient is in the dev extra")


def test_bytes_elements_read_what_tritonclient_writes() -> None:
    elements = [b"", b"x", bytes(range(256)) * 3]
    raw = utils.serialize_byte_tensor(np.array(elements, dtype=object)).item()
    assert _split_bytes(raw, 3) == elements
    with pytest.raises(InvalidBodyError, match="after its 2"):
        _split_bytes(raw, 2)
    with pytest.raises(InvalidBodyError, match="ends before element 3"):
        _split_bytes(raw, 4)


def result(label: str, p: float, ood: bool) -> ImageResult:
    return ImageResult(index=0, decision="rejected_ood" if ood else "accepted", label=label, class_index=1,
                       confidence=p, top_k=[TopKEntry(label=label, class_index=1, probability=p),
                                            TopKEntry(label="b", class_index=0, probability=1 - p)],
                       delta_energy=1.25, gate_score=1.25, threshold=2.0, is_ood=ood, ood_p_value=0.125)


def test_outputs_decode_with_tritonclients_deserializers() -> None:
    results = [result("ä", 0.75, True), result("c", 0.5, False)]
    probs = np.array([[0.25, 0.75], [0.5, 0.5]], np.float32)
    tensors = {t.name: t for t in output_tensors(results, probs, ["b", "ä"], [Requested(n, True) for n in OUTPUTS])}
    labels = utils.deserialize_bytes_tensor(tensors["label"].binary())
    assert [x.decode() for x in labels] == ["ä", "c"] and tensors["label"].shape == [2]
    assert np.frombuffer(tensors["confidence"].binary(), "<f4").tolist() == [0.75, 0.5]
    assert np.frombuffer(tensors["class_index"].binary(), "<i8").tolist() == [1, 1]
    assert tensors["is_ood"].binary() == b"\x01\x00" and tensors["is_ood"].json_data() == [True, False]
    assert tensors["top_k_labels"].shape == [2, 2] and tensors["top_k_labels"].json_data() == ["ä", "b", "c", "b"]
    ranked = output_tensors(results, probs, ["b", "ä"], [Requested("probabilities", False, 5)])[0]
    assert ranked.shape == [2, 2] and ranked.json_data() == ["0.75:1:ä", "0.25:0:b", "0.5:0:b", "0.5:1:ä"]


def test_a_request_names_its_model_and_binary_defaults() -> None:
    settings = Settings(engine="dummy", bundle_path="/nonexistent")  # type: ignore[arg-type]
    data = b"\x01\x00\x00\x00z"
    head = (b'{"model_name": "m", "parameters": {"binary_data_output": true}, "outputs": [{"name": "label"}, '
            b'{"name": "is_ood", "parameters": {"binary_data": false}}], "inputs": [{"name": "image", "shape": [1], '
            b'"datatype": "BYTES", "parameters": {"binary_data_size": 5}}]}')
    call = parse_infer_request(head + data, len(head), "m", settings)
    assert [im.data for im in call.images] == [b"z"]
    assert call.outputs == [Requested("label", True), Requested("is_ood", False)]
    with pytest.raises(InvalidBodyError, match="the body names model 'm'"):
        parse_infer_request(head + data, len(head), "other", settings)

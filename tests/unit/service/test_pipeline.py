"""Post-processing against independent expectations; base64 intake; no URL fetching."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from pydantic import ValidationError

from service.batcher import Row
from service.engines.dummy import dummy_bundle
from service.pipeline import postprocess
from service.schemas import ClassifyJSONRequest

pytestmark = pytest.mark.unit


def row(probs: list[float], de: float) -> Row:
    p = np.asarray(probs, np.float32)
    return Row({"logits": np.log(p), "probs": p, "delta_energy": np.float32(de), "energy": np.float32(0)}, 2)


def test_postprocess_labels_flags_and_p_values() -> None:
    manifest = dummy_bundle(4).manifest
    calib = manifest.calibration
    assert calib is not None
    below, above = calib.threshold - 1.0, calib.threshold + 5.0
    results = postprocess([row([0.1, 0.6, 0.2, 0.1], above), row([0.4, 0.1, 0.1, 0.4], below)], manifest, 2,
                          ["a.png", None])
    ok, ood = results
    assert (ok.label, ok.class_index, ok.decision, ok.is_ood, ok.message) == ("class_1", 1, "accepted", False, None)
    assert ok.confidence == pytest.approx(0.6) and [e.class_index for e in ok.top_k] == [1, 2]
    assert (ood.is_ood, ood.decision, ood.label) == (True, "rejected_ood", "class_0")  # ties: lowest index
    assert ood.message is not None and "out-of-distribution" in ood.message
    assert ok.threshold == ood.threshold == calib.threshold
    # independent p-value: the dummy calibration scores are linspace(2, 40, 201), fraction <= score
    scores = np.linspace(2.0, 40.0, 201)
    for r in results:
        assert r.ood_p_value == pytest.approx((scores <= r.delta_energy).mean(), abs=0.01)


def test_top_k_is_clamped_to_the_number_of_classes() -> None:
    (r,) = postprocess([row([0.25, 0.25, 0.3, 0.2], 10.0)], dummy_bundle(4).manifest, 50, [None])
    assert len(r.top_k) == 4 and r.top_k[0].class_index == 2


def test_json_images_decode_base64_and_data_urls() -> None:
    raw = b"\x89PNG..."
    enc = base64.b64encode(raw).decode()
    req = ClassifyJSONRequest.model_validate({"images": [enc, f"data:image/png;base64,{enc}"], "top_k": 2})
    assert req.images == [raw, raw] and req.top_k == 2


@pytest.mark.parametrize(("payload", "needle"), [
    ({"images": ["https://example.com/cat.jpg"]}, "not fetched"),
    ({"images": ["file:///etc/passwd"]}, "not fetched"),
    ({"images": ["not base64!!"]}, "base64"),
    ({"images": []}, "at least 1"),
    ({"images": [123]}, "base64"),
    ({"images": ["aGk="], "top_k": 0}, "greater than"),
    ({"images": ["aGk="], "url": "http://x"}, "Extra inputs"),
])
def test_bad_json_fields_are_refused(payload: dict[str, object], needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        ClassifyJSONRequest.model_validate(payload)

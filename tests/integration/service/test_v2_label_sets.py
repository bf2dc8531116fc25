"""Label sets on the Open Inference Protocol (issue 20 item 1, issue 17): the request parameters ``label_set``,
``labels`` (comma-separated) and ``prompts`` of ``POST /v2/models/{name}/infer`` answer what ``POST /classify``
answers with ``?label_set=`` or ``labels``: the same labels, ΔEnergy, OOD flags and threshold; refusals keep
``/classify``'s statuses in the protocol's error shape (a malformed request is the protocol's 400)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from models.bundle import load_bundle
from tests.integration.service.test_label_sets_api import ADMIN, SHAPES, examples, put_body, settings
from tests.service_support import b64, files, noise_image, serve

pytestmark = pytest.mark.integration

IMAGES = [noise_image(0), noise_image(1), noise_image(2)]


def infer_body(images: list[bytes], **parameters: Any) -> dict[str, Any]:
    return {"parameters": parameters, "inputs": [{"name": "image", "shape": [len(images)], "datatype": "BYTES",
                                                  "data": [b64(im) for im in images]}]}


def outputs(body: dict[str, Any]) -> dict[str, list[Any]]:
    return {o["name"]: o["data"] for o in body["outputs"]}


def assert_same(v2: dict[str, Any], classify: dict[str, Any]) -> None:
    got, results = outputs(v2), classify["results"]
    assert got["label"] == [r["label"] for r in results]
    assert got["delta_energy"] == pytest.approx([r["delta_energy"] for r in results], abs=1e-5)
    assert got["is_ood"] == [r["is_ood"] for r in results]
    assert got["gate_score"] == pytest.approx([r["gate_score"] for r in results], abs=1e-5)
    assert v2["parameters"]["threshold"] == pytest.approx(results[0]["threshold"])
    assert (v2["parameters"]["label_set"], v2["parameters"]["calibrated"]) == (classify["label_set"],
                                                                              classify["calibrated"])


async def test_ad_hoc_labels_and_a_named_set_answer_as_classify(text_bundle: Path, tmp_path: Path) -> None:
    name = load_bundle(text_bundle).manifest.name
    async with serve(settings(text_bundle, tmp_path)) as (client, _):
        assert (await client.put("/label-sets/shapes", files=put_body(SHAPES, examples(SHAPES, 5)),
                                 headers=ADMIN)).status_code == 201
        for params, query, data in (
            ({"labels": ",".join(SHAPES)}, "", {"labels": SHAPES}),
            ({"labels": ",".join(SHAPES), "prompts": "zero-shot"}, "?prompts=zero-shot", {"labels": SHAPES}),
            ({"label_set": "shapes"}, "?label_set=shapes", {}),
        ):
            v2 = await client.post(f"/v2/models/{name}/infer", json=infer_body(IMAGES, **params))
            c = await client.post(f"/classify{query}", files=files(*IMAGES), data=data)
            assert v2.status_code == c.status_code == 200, (v2.text, c.text)
            assert_same(v2.json(), c.json())
            got = outputs(v2.json())
            assert set(got["label"]) <= set(SHAPES) and len(got["probabilities"]) == len(IMAGES) * len(SHAPES)
        # without a label set: the bundle's classes, as before (no label_set parameter in the answer)
        plain = await client.post(f"/v2/models/{name}/infer", json=infer_body(IMAGES[:1]))
        assert plain.status_code == 200 and "label_set" not in plain.json()["parameters"]
        assert outputs(plain.json())["label"][0] in load_bundle(text_bundle).manifest.classes


@pytest.mark.parametrize(("params", "status", "says"), [
    ({"label_set": "nope"}, 404, "nope"),
    ({"label_set": "shapes", "labels": "a,b"}, 400, "not both"),
    ({"labels": "octagon,octagon"}, 400, "octagon"),
    ({"labels": "octagon, pentagon"}, 400, "whitespace"),
    ({"labels": "octagon"}, 400, "2"),
    ({"prompts": "zero-shot"}, 400, "ad-hoc"),
    ({"labels": ["a", "b"]}, 400, "labels"),  # the protocol's parameter values are scalars: a string here
])
async def test_bad_label_set_parameters_are_refused_in_the_protocols_shape(
        text_bundle: Path, tmp_path: Path, params: dict[str, Any], status: int, says: str) -> None:
    name = load_bundle(text_bundle).manifest.name
    async with serve(settings(text_bundle, tmp_path)) as (client, _):
        r = await client.post(f"/v2/models/{name}/infer", json=infer_body(IMAGES[:1], **params))
        assert r.status_code == status, r.text
        assert list(r.json()) == ["error"] and says in r.json()["error"], r.json()
        assert (await client.post(f"/v2/models/{name}/infer", json=infer_body(IMAGES[:1]))).status_code == 200


async def test_a_bundle_without_a_text_side_refuses_label_sets_with_409(tiny_bundle: Path, tmp_path: Path) -> None:
    name = load_bundle(tiny_bundle).manifest.name
    async with serve(settings(tiny_bundle, tmp_path)) as (client, _):
        r = await client.post(f"/v2/models/{name}/infer", json=infer_body(IMAGES[:1], labels=",".join(SHAPES)))
        assert r.status_code == 409 and list(r.json()) == ["error"], r.text

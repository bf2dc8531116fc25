"""The Open Inference Protocol routes, spoken by clients no one here wrote: tritonclient.http (Triton's) and the
kserve SDK's InferenceRESTClient, against a real ``deltagate serve`` on the default bundle (default engine).

For the same images, /v2/models/{name}/infer gives what POST /classify gives: the same label, ΔEnergy (the
float32 value) and OOD flag, for one image and for a batch, as JSON tensors and as binary data. Each request
here is one batch (an idle server, at most max_batch_size images), so both routes run the same forward.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from tests.server_process import ServerProcess, serving
from tests.service_support import SHAPES, drawn_shape

pytestmark = pytest.mark.e2e

tritonclient_http = pytest.importorskip("tritonclient.http", reason="tritonclient[http] is in the dev extra")
kserve = pytest.importorskip("kserve", reason="kserve is in the dev extra")

MODEL = "deltagate-default"
IMAGES = [drawn_shape(kind) for kind in SHAPES]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log = tmp_path_factory.mktemp("v2") / "server.log"
    env = {"DELTAGATE_LOG_LEVEL": "warning", "DELTAGATE_ADMIN_KEY": "k",  # label sets in a directory of the test's
           "DELTAGATE_LABEL_SETS_DIR": str(tmp_path_factory.mktemp("sets"))}
    with serving(log, env) as running:
        yield running


def classify(server: ServerProcess, images: list[bytes], query: str = "",
             labels: list[str] | None = None) -> list[dict[str, Any]]:
    """POST /classify's results for these images, in one request (``query``: e.g. ``?label_set=NAME``)."""
    r = httpx.post(f"{server.url}/classify{query}", files=[("file", (f"{i}.png", im)) for i, im in enumerate(images)],
                   data={"labels": labels} if labels else None, timeout=30)
    assert r.status_code == 200, r.text
    return list(r.json()["results"])


def assert_same(expected: list[dict[str, Any]], labels: Any, delta_energy: Any, is_ood: Any) -> None:
    """The v2 outputs agree with /classify's results: labels, the float32 ΔEnergy, the OOD flags."""
    labels = [x.decode() if isinstance(x, bytes) else str(x) for x in np.asarray(labels).ravel()]
    assert labels == [r["label"] for r in expected]
    assert np.asarray(delta_energy, np.float32).tolist() == np.float32([r["delta_energy"] for r in expected]).tolist()
    assert np.asarray(is_ood).ravel().tolist() == [r["is_ood"] for r in expected]


def triton_input(images: list[bytes], binary: bool) -> Any:
    tensor = tritonclient_http.InferInput("image", [len(images)], "BYTES")
    data = images if binary else [base64.b64encode(im) for im in images]  # JSON strings cannot hold raw bytes
    return tensor.set_data_from_numpy(np.array(data, dtype=object), binary_data=binary)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("count", [1, len(IMAGES)], ids=["one", "batch"])
def test_tritonclient_gets_what_classify_gives(server: ServerProcess, binary: bool, count: int) -> None:
    images = IMAGES[:count] if count > 1 else [IMAGES[3]]  # one: the star
    expected = classify(server, images)
    assert {r["is_ood"] for r in expected} == ({False, True} if count > 1 else {False})  # both decisions compared
    client = tritonclient_http.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        outputs = [tritonclient_http.InferRequestedOutput(name, binary_data=binary)
                   for name in ("label", "delta_energy", "is_ood", "gate_score", "confidence", "ood_p_value")]
        result = client.infer(MODEL, [triton_input(images, binary)], outputs=outputs, request_id="r1")
    finally:
        client.close()
    assert_same(expected, result.as_numpy("label"), result.as_numpy("delta_energy"), result.as_numpy("is_ood"))
    assert result.get_response()["id"] == "r1" and result.get_response()["model_name"] == MODEL
    np.testing.assert_array_equal(result.as_numpy("gate_score"), np.float32([r["gate_score"] for r in expected]))
    np.testing.assert_array_equal(result.as_numpy("confidence"), np.float32([r["confidence"] for r in expected]))
    np.testing.assert_allclose(result.as_numpy("ood_p_value"), [r["ood_p_value"] for r in expected], rtol=1e-6)


def test_tritonclient_metadata_health_topk_and_classification(server: ServerProcess) -> None:
    client = tritonclient_http.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
        assert client.is_model_ready(MODEL, model_version="0.1.0")
        assert set(client.get_server_metadata()["extensions"]) == {"binary_tensor_data", "classification"}
        metadata = client.get_model_metadata(MODEL)
        classes = httpx.get(f"{server.url}/model", timeout=10).json()["classes"]
        assert metadata["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
        shapes = {o["name"]: (o["datatype"], o["shape"]) for o in metadata["outputs"]}
        assert shapes["label"] == ("BYTES", [-1]) and shapes["is_ood"] == ("BOOL", [-1])
        assert shapes["probabilities"] == ("FP32", [-1, len(classes)]) and shapes["top_k_labels"] == ("BYTES", [-1, -1])
        # All outputs (none requested: tritonclient asks for binary data), top-k from a request parameter.
        result = client.infer(MODEL, [triton_input(IMAGES, True)], parameters={"top_k": 3})
        expected = [(r["top_k"], r["label"]) for r in classify(server, IMAGES)]
        assert result.as_numpy("top_k_labels").shape == (len(IMAGES), 3)
        probabilities = result.as_numpy("probabilities")
        assert probabilities.shape == (len(IMAGES), len(classes))
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
        # Triton's classification extension on the probabilities: "value:index:label", best first.
        ranked = client.infer(MODEL, [triton_input(IMAGES, True)], outputs=[
            tritonclient_http.InferRequestedOutput("probabilities", class_count=2)]).as_numpy("probabilities")
        assert ranked.shape == (len(IMAGES), 2)
        for row, (top_k, label) in zip(ranked, expected, strict=True):
            value, index, name = row[0].decode().split(":")
            assert name == label == classes[int(index)] == top_k[0]["label"]
            assert np.float32(value) == np.float32(top_k[0]["probability"])
        with pytest.raises(tritonclient_http.InferenceServerException) as refused:
            client.infer("no-such-model", [triton_input(IMAGES[:1], True)])
        assert refused.value.status() == "404" and "deltagate-default" in refused.value.message()
        with pytest.raises(tritonclient_http.InferenceServerException) as bad:
            client.infer(MODEL, [triton_input([IMAGES[0], b"not an image"], True)])
        assert bad.value.status() == "400" and "image 1" in bad.value.message()
    finally:
        client.close()


def test_top_k_parameter(server: ServerProcess) -> None:
    """The top_k request parameter sizes the top_k_* outputs (clamped to the classes), as /classify's top_k."""
    body = {"parameters": {"top_k": 3}, "inputs": [{"name": "image", "shape": [2], "datatype": "BYTES",
                                                     "data": [base64.b64encode(im).decode() for im in IMAGES[:2]]}],
            "outputs": [{"name": "top_k_labels"}, {"name": "top_k_probabilities"}]}
    answer = httpx.post(f"{server.url}/v2/models/{MODEL}/infer", json=body, timeout=30).json()
    expected = httpx.post(f"{server.url}/classify?top_k=3", timeout=30,
                          json={"images": body["inputs"][0]["data"]}).json()["results"]  # type: ignore[index]
    labels, probabilities = answer["outputs"]
    assert labels["shape"] == [2, 3] and labels["data"] == [e["label"] for r in expected for e in r["top_k"]]
    assert np.float32(probabilities["data"]).tolist() == np.float32(
        [e["probability"] for r in expected for e in r["top_k"]]).tolist()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_kserve_rest_client_gets_what_classify_gives(server: ServerProcess, binary: bool) -> None:
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
    from kserve.protocol.infer_type import RequestedOutput

    expected = classify(server, IMAGES)

    async def infer() -> Any:
        client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
        try:
            assert await client.is_server_live(server.url) and await client.is_server_ready(server.url)
            assert await client.is_model_ready(server.url, MODEL)
            if binary:
                tensor = InferInput("image", [len(IMAGES)], "BYTES")
                tensor.set_data_from_numpy(np.array(IMAGES, dtype=object), binary_data=True)
                request = InferRequest(MODEL, [tensor])
            else:
                tensor = InferInput("image", [len(IMAGES)], "BYTES",
                                    data=[base64.b64encode(im).decode() for im in IMAGES])
                request = InferRequest(MODEL, [tensor], request_outputs=[
                    RequestedOutput(name) for name in ("label", "delta_energy", "is_ood")])
            return await client.infer(server.url, request, model_name=MODEL)
        finally:
            await client.close()

    response = asyncio.run(infer())
    outputs = {o.name: o.as_numpy() for o in response.outputs}
    assert_same(expected, outputs["label"], outputs["delta_energy"], outputs["is_ood"])
    assert response.model_name == MODEL


def test_v2_traffic_counts_in_the_service_metrics(server: ServerProcess) -> None:
    """Same metrics as /classify: the image counters move, and requests are labelled by the v2 route."""
    def images_classified() -> float:
        text = httpx.get(f"{server.url}/metrics", timeout=10).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("deltagate_images_classified_total{"))

    before = images_classified()
    client = tritonclient_http.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        client.infer(MODEL, [triton_input(IMAGES, True)])
    finally:
        client.close()
    assert images_classified() == before + len(IMAGES)
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert 'route="/v2/models/{model_name}/infer"' in metrics


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_label_sets_as_classify(server: ServerProcess, binary: bool) -> None:
    """Request parameters select the classes: ad-hoc labels (comma-separated) and a named set (made by PUT) give
    tritonclient what /classify?label_set= and labels give: label, ΔEnergy, OOD flag and the set's threshold."""
    shapes = ["octagon", "pentagon", "hexagon"]
    put = httpx.put(f"{server.url}/label-sets/v2-shapes", files=[("labels", (None, s)) for s in SHAPES[:4]],
                    headers={"Authorization": "Bearer k"}, timeout=60)
    assert put.status_code in (200, 201), put.text
    client = tritonclient_http.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        for parameters, expected in (
            ({"labels": ",".join(shapes)}, classify(server, IMAGES, labels=shapes)),
            ({"label_set": "v2-shapes"}, classify(server, IMAGES, "?label_set=v2-shapes")),
        ):
            outputs = [tritonclient_http.InferRequestedOutput(name, binary_data=binary)
                       for name in ("label", "delta_energy", "is_ood", "probabilities")]
            result = client.infer(MODEL, [triton_input(IMAGES, binary)], outputs=outputs, parameters=parameters)
            assert_same(expected, result.as_numpy("label"), result.as_numpy("delta_energy"),
                        result.as_numpy("is_ood"))
            head = result.get_response()["parameters"]
            assert head["threshold"] == pytest.approx(expected[0]["threshold"]) and head["calibrated"] is False
            assert head["label_set"] == parameters.get("label_set", "ad-hoc")
            k = len(shapes) if "labels" in parameters else 4  # the set's classes
            assert result.as_numpy("probabilities").shape == (len(IMAGES), k)
        with pytest.raises(tritonclient_http.InferenceServerException) as unknown:
            client.infer(MODEL, [triton_input(IMAGES[:1], binary)], parameters={"label_set": "no-such-set"})
        assert unknown.value.status() == "404" and "no-such-set" in unknown.value.message()
    finally:
        client.close()

"""The Open Inference Protocol routes in process (dummy engine): the answers equal /classify's, the binary
framing by hand, and every refusal in the protocol's error shape ({"error": "<message>"}) with /classify's
status and headers: bad tensors, limits, content types, overload, the API key, an unknown model."""

from __future__ import annotations

import json
import struct
from typing import Any

import httpx
import pytest

from service.v2_schemas import OUTPUTS
from tests.service_support import b64, class_image, dummy_settings, engines_of, files, serve, uniform_image, until

pytestmark = pytest.mark.integration

MODEL = "dummy"  # the dummy engine's bundle
INFER = f"/v2/models/{MODEL}/infer"
IMAGES = [class_image(0), class_image(2), uniform_image()]  # two in-distribution, one OOD (dummy engine)


def request(images: list[bytes], **extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "image", "shape": [len(images)], "datatype": "BYTES",
                        "data": [b64(im) for im in images]}], **extra}


def binary_body(images: list[bytes], header: dict[str, Any] | None = None) -> tuple[bytes, dict[str, str]]:
    """A binary tensor data request: the JSON header, then each image as a 4-byte length and its bytes."""
    data = b"".join(struct.pack("<I", len(im)) + im for im in images)
    head = header or {"inputs": [{"name": "image", "shape": [len(images)], "datatype": "BYTES",
                                  "parameters": {"binary_data_size": len(data)}}],
                      "parameters": {"binary_data_output": True}}
    text = json.dumps(head).encode()
    return text + data, {"Inference-Header-Content-Length": str(len(text)),
                         "Content-Type": "application/octet-stream"}


def split_binary(response: httpx.Response) -> tuple[dict[str, Any], dict[str, bytes]]:
    """A binary response: its JSON header and each output's bytes."""
    size = int(response.headers["inference-header-content-length"])
    head, rest, out = json.loads(response.content[:size]), response.content[size:], {}
    for output in head["outputs"]:
        n = output["parameters"]["binary_data_size"]
        out[output["name"]], rest = rest[:n], rest[n:]
    assert rest == b""
    return head, out


def assert_v2_error(r: httpx.Response, status: int, *words: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    for word in words:
        assert word in body["error"], body["error"]


async def test_json_infer_answers_what_classify_answers() -> None:
    async with serve() as (client, _):
        expected = (await client.post("/classify", files=files(*IMAGES), params={"top_k": 2})).json()["results"]
        r = await client.post(INFER, json=request(IMAGES, id="7", parameters={"top_k": 2}))
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        body = r.json()
        assert (body["model_name"], body["model_version"], body["id"]) == ("dummy", "0", "7")
        assert body["parameters"]["gate_score_name"] == "delta_energy"
        outputs = {o["name"]: o for o in body["outputs"]}
        assert list(outputs) == list(OUTPUTS)  # all of them, in the documented order
        assert outputs["label"]["data"] == [e["label"] for e in expected]
        assert outputs["is_ood"] == {"name": "is_ood", "shape": [3], "datatype": "BOOL",
                                     "data": [e["is_ood"] for e in expected]}
        assert outputs["is_ood"]["data"] == [False, False, True]
        assert outputs["delta_energy"]["data"] == pytest.approx([e["delta_energy"] for e in expected], rel=1e-6)
        assert outputs["top_k_labels"]["shape"] == [3, 2]
        assert outputs["top_k_class_indices"]["data"] == [t["class_index"] for e in expected for t in e["top_k"]]
        assert outputs["probabilities"]["shape"] == [3, 4]
        # The versions path is the same model; an id is echoed only when given.
        r = await client.post(f"/v2/models/{MODEL}/versions/0/infer", json=request(IMAGES[:1]))
        assert r.status_code == 200 and "id" not in r.json()


async def test_binary_request_and_response_by_hand() -> None:
    async with serve() as (client, _):
        body, headers = binary_body(IMAGES)
        r = await client.post(INFER, content=body, headers=headers)
        assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
        head, data = split_binary(r)
        assert [o["datatype"] for o in head["outputs"]] == [dtype for dtype, _ in OUTPUTS.values()]
        assert data["is_ood"] == b"\x00\x00\x01"  # BOOL: one byte each
        labels, at = [], 0
        while at < len(data["label"]):  # BYTES: 4-byte little-endian length, then the bytes
            (n,) = struct.unpack_from("<I", data["label"], at)
            labels.append(data["label"][at + 4 : at + 4 + n].decode())
            at += 4 + n
        assert labels == ["class_0", "class_2", labels[2]]
        assert len(data["delta_energy"]) == 3 * 4 and len(data["class_index"]) == 3 * 8
        # One output as JSON, one binary; the classification extension on the probabilities.
        header = {"inputs": [{"name": "image", "shape": [3], "datatype": "BYTES",
                              "parameters": {"binary_data_size": len(body) - int(headers[
                                  "Inference-Header-Content-Length"])}}],
                  "outputs": [{"name": "label", "parameters": {"binary_data": False}},
                              {"name": "probabilities", "parameters": {"classification": 2, "binary_data": False}},
                              {"name": "confidence", "parameters": {"classification": 3}}]}
        body2, headers2 = binary_body(IMAGES, header)
        r = await client.post(INFER, content=body2, headers={**headers2, "Content-Type": ""})  # tritonclient: none
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        label, ranked, confidence = r.json()["outputs"]
        assert label["data"] == ["class_0", "class_2", label["data"][2]]
        assert ranked["shape"] == [3, 2] and ranked["datatype"] == "BYTES"
        assert ranked["data"][0].endswith(":0:class_0") and ranked["data"][2].endswith(":2:class_2")
        assert confidence["shape"] == [3, 1] and confidence["data"][0].endswith(":0")  # a scalar: a row of one


async def test_health_metadata_and_unknown_models() -> None:
    async with serve() as (client, _):
        assert (await client.get("/v2")).json() == {"name": "deltagate", "version": (await client.get("/v2")).json()[
            "version"], "extensions": ["binary_tensor_data", "classification"]}
        assert (await client.get("/v2/health/live")).json() == {"live": True}
        assert (await client.get("/v2/health/ready")).json() == {"ready": True}
        assert (await client.get(f"/v2/models/{MODEL}/ready")).json() == {"name": MODEL, "ready": True}
        assert (await client.get(f"/v2/models/{MODEL}/versions/0/ready")).status_code == 200
        metadata = (await client.get(f"/v2/models/{MODEL}")).json()
        assert metadata["name"] == MODEL and metadata["versions"] == ["0"] and metadata["platform"] == "deltagate"
        assert {o["name"]: o["shape"] for o in metadata["outputs"]}["probabilities"] == [-1, 4]
        assert (await client.get(f"/v2/models/{MODEL}/versions/0")).json() == metadata
        for path in ("/v2/models/other", "/v2/models/other/ready", f"/v2/models/{MODEL}/versions/9",
                     f"/v2/models/{MODEL}/versions/9/ready"):
            assert_v2_error(await client.get(path), 404, "serves")
        assert_v2_error(await client.post("/v2/models/other/infer", json=request(IMAGES)), 404, "'dummy'")
        assert_v2_error(await client.get("/v2/nothing"), 404)
        assert_v2_error(await client.get(INFER), 405)


async def test_not_ready_is_503_with_retry_after() -> None:
    app_settings = dummy_settings(retry_after_s=3)
    async with serve(app_settings) as (client, app):
        app.state.runtime.phase = app.state.runtime.phase.STOPPING
        r = await client.get("/v2/health/ready")
        assert (r.status_code, r.json(), r.headers["retry-after"]) == (503, {"ready": False}, "3")
        r = await client.get(f"/v2/models/{MODEL}/ready")
        assert (r.status_code, r.json()) == (503, {"name": MODEL, "ready": False})
        assert (await client.get("/v2/health/live")).json() == {"live": True}
        r = await client.post(INFER, json=request(IMAGES))
        assert_v2_error(r, 503, "not ready")
        assert r.headers["retry-after"] == "3"


BAD_REQUESTS: list[tuple[str, Any, int, str]] = [
    ("unknown input", {"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["AAAA"]}]}, 400,
     "inputs.0.name"),
    ("wrong datatype", {"inputs": [{"name": "image", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, 400,
     "datatype"),
    ("two inputs", {"inputs": [request(IMAGES[:1])["inputs"][0]] * 2}, 400, "inputs"),
    ("shape and data disagree", {"inputs": [{**request(IMAGES)["inputs"][0], "shape": [2]}]}, 400,
     "shape [2] but 3 elements"),
    ("a shape of two dimensions", {"inputs": [{**request(IMAGES)["inputs"][0], "shape": [3, 1]}]}, 400, "shape"),
    ("binary_data_size in a JSON request", {"inputs": [{**request(IMAGES)["inputs"][0],
                                                        "parameters": {"binary_data_size": 4}}]}, 400, "parameters"),
    ("an unknown output", request(IMAGES, outputs=[{"name": "logits"}]), 400, "outputs.0"),
    ("classification of a BYTES output", request(IMAGES, outputs=[{"name": "label", "parameters": {
        "classification": 1}}]), 400, "classification"),
    ("an unknown parameter", request(IMAGES, parameters={"priority": 1}), 400, "priority"),
    ("a boolean as 0", request(IMAGES, parameters={"binary_data_output": 0}), 400, "binary_data_output"),
    ("top_k as text", request(IMAGES, parameters={"top_k": "3"}), 400, "top_k"),
    ("another model named in the body", request(IMAGES, model_name="other"), 400, "'other'"),
    ("not base64", {"inputs": [{**request(IMAGES)["inputs"][0], "data": ["@@@@", "AAAA", "AAAA"]}]}, 400, "base64"),
    ("an empty image", {"inputs": [{**request(IMAGES)["inputs"][0], "data": ["", "AAAA", "AAAA"]}]}, 400,
     "inputs.0.data.0"),
    ("an image that does not decode", request([IMAGES[0], b"not an image"]), 400, "image 1"),
    ("too many images (data)", request([IMAGES[0]] * 5), 413, "limit is 4"),
    ("too many images (shape)", {"inputs": [{**request(IMAGES)["inputs"][0], "shape": [10**12]}]}, 413, "limit"),
    ("not JSON", b"{", 400, "not valid JSON"),
]


@pytest.mark.parametrize(("body", "status", "words"), [case[1:] for case in BAD_REQUESTS],
                         ids=[case[0] for case in BAD_REQUESTS])
async def test_bad_requests_get_the_protocols_error(body: Any, status: int, words: str) -> None:
    async with serve(dummy_settings(max_images_per_request=4, max_queue_size=8, max_batch_size=4)) as (client, app):
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        r = await client.post(INFER, content=content, headers={"Content-Type": "application/json"})
        assert_v2_error(r, status, words)
        assert app.state.runtime.batcher.depth == 0  # nothing of a refused request stays admitted


BAD_FRAMES: list[tuple[str, Any, str]] = [
    ("header length past the body", lambda body, n: (body, str(len(body) + 1)), "between 1 and"),
    ("header length zero", lambda body, n: (body, "0"), "between 1 and"),
    ("header length not a number", lambda body, n: (body, "12a"), "between 1 and"),
    ("header length 30 digits", lambda body, n: (body, "9" * 30), "between 1 and"),
    ("a byte missing", lambda body, n: (body[:-1], str(n)), "binary_data_size"),
    ("a byte too many", lambda body, n: (body + b"x", str(n)), "binary_data_size"),
    ("header cut inside the JSON", lambda body, n: (body, str(n - 1)), "not valid JSON"),
]


@pytest.mark.parametrize(("mangle", "words"), [case[1:] for case in BAD_FRAMES], ids=[case[0] for case in BAD_FRAMES])
async def test_bad_binary_framing_is_400(mangle: Any, words: str) -> None:
    async with serve() as (client, _):
        body, headers = binary_body(IMAGES)
        body, length = mangle(body, int(headers["Inference-Header-Content-Length"]))
        r = await client.post(INFER, content=body, headers={**headers, "Inference-Header-Content-Length": length})
        assert_v2_error(r, 400, words)


async def test_element_lengths_must_fill_the_binary_data_exactly() -> None:
    async with serve() as (client, _):
        for data, words in [(struct.pack("<I", 2**32 - 1) + b"abc", "says 4294967295 bytes"),
                            (struct.pack("<I", 3) + b"abc" + b"\0\0", "ends before element 1"),
                            (struct.pack("<I", 1) + b"a" + struct.pack("<I", 1) + b"b" + b"zz", "after its 2")]:
            n = 1 if words.startswith("says") else 2
            head = json.dumps({"inputs": [{"name": "image", "shape": [n], "datatype": "BYTES",
                                           "parameters": {"binary_data_size": len(data)}}]}).encode()
            r = await client.post(INFER, content=head + data,
                                  headers={"Inference-Header-Content-Length": str(len(head))})
            assert_v2_error(r, 400, words)


async def test_content_type_encoding_size_overload_and_key() -> None:
    settings = dummy_settings(max_batch_size=1, max_queue_size=2, max_images_per_request=2, max_wait_ms=0.0,
                              max_body_bytes=4096, api_key="k")
    auth = {"Authorization": "Bearer k"}
    async with serve(settings) as (client, app):
        r = await client.post(INFER, json=request(IMAGES[:1]))
        assert_v2_error(r, 401, "API key")
        assert r.headers["www-authenticate"] == "Bearer"
        assert_v2_error(await client.get(f"/v2/models/{MODEL}"), 401)
        assert (await client.get("/v2/health/ready")).status_code == 200  # probes need no key
        r = await client.post(INFER, content=json.dumps(request(IMAGES[:1])), headers={**auth, "Content-Type":
                                                                                         "text/plain"})
        assert_v2_error(r, 415, "application/json")
        r = await client.post(INFER, content=b"x", headers={**auth, "Content-Encoding": "gzip"})
        assert_v2_error(r, 415, "uncompressed")
        assert_v2_error(await client.post(INFER, content=b"x" * 5000, headers=auth), 413, "4096")  # before routing
        # Overload: one image in the forward, two queued: the budget (2) is spent, refused before the body.
        import asyncio
        import threading

        (engine,) = engines_of(app)
        engine.gate = threading.Event()
        forwards = engine.forward_count  # the warm-up's forward (batch bucket 1) is counted already
        first = asyncio.ensure_future(client.post(INFER, json=request(IMAGES[:1]), headers=auth))
        await until(lambda: engine.forward_count == forwards + 1)
        second = asyncio.ensure_future(client.post(INFER, json=request(IMAGES[1:3]), headers=auth))
        await until(lambda: app.state.runtime.batcher.depth == 2)
        r = await client.post(INFER, json=request(IMAGES[:1]), headers=auth)
        assert_v2_error(r, 503, "overloaded")
        assert r.headers["retry-after"] == "1"
        engine.gate.set()
        assert [(await f).status_code for f in (first, second)] == [200, 200]


async def test_v2_requests_are_metered_and_logged_like_classify(caplog: pytest.LogCaptureFixture) -> None:
    async with serve() as (client, _):
        with caplog.at_level("INFO", logger="deltagate.access"):
            assert (await client.post(INFER, json=request(IMAGES))).status_code == 200
        metrics = (await client.get("/metrics")).text
    assert 'deltagate_http_requests_total{method="POST",route="/v2/models/{model_name}/infer",status="200"} 1.0' \
        in metrics
    assert 'deltagate_ood_flags_total{predicted_class="class_2"}' in metrics
    line = next(r for r in caplog.records if getattr(r, "fields", {}).get("route") == "/v2/models/{model_name}/infer")
    assert line.fields["images"] == 3 and line.fields["is_ood"] == [False, False, True]  # type: ignore[attr-defined]

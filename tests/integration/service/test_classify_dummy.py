"""POST /classify through the real ASGI app with the dummy engine: input forms, batching, OOD."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from models.scoring_spec import score_param_specs
from tests.service_support import (
    TestEngine,
    b64,
    class_image,
    dummy_settings,
    encode,
    engines_of,
    files,
    serve,
    uniform_image,
)

pytestmark = pytest.mark.integration


def engine_of(app) -> TestEngine:  # type: ignore[no-untyped-def]
    (engine,) = engines_of(app)
    return engine


async def test_multipart_single_and_several_images() -> None:
    async with serve() as (client, _):
        r = await client.post("/classify", files=files(class_image(2)))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == {"name": "dummy", "version": "0"} and body["num_images"] == 1
        (res,) = body["results"]
        assert (res["label"], res["class_index"], res["is_ood"], res["decision"]) == ("class_2", 2, False, "accepted")
        assert res["filename"] == "img0.png" and 0.0 < res["confidence"] <= 1.0
        assert {"delta_energy", "threshold", "ood_p_value", "top_k"} <= set(res)
        assert r.headers["x-request-id"] == body["request_id"]

        r = await client.post("/classify", files=files(class_image(0), class_image(3), uniform_image()))
        assert [x["label"] for x in r.json()["results"][:2]] == ["class_0", "class_3"]
        assert [x["index"] for x in r.json()["results"]] == [0, 1, 2]


async def test_json_base64_and_top_k() -> None:
    async with serve() as (client, _):
        r = await client.post("/classify", json={"images": [b64(class_image(1)), "data:image/png;base64,"
                                                           + b64(class_image(3))], "top_k": 2})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [x["label"] for x in results] == ["class_1", "class_3"]
        assert all(len(x["top_k"]) == 2 for x in results) and results[0]["top_k"][0]["label"] == "class_1"
        r = await client.post("/classify?top_k=3", files=files(class_image(0)))
        assert len(r.json()["results"][0]["top_k"]) == 3
        r = await client.post("/classify", files=files(class_image(0)), data={"top_k": "1"})
        assert len(r.json()["results"][0]["top_k"]) == 1


async def test_ood_image_is_rejected_unmistakably_but_keeps_its_label() -> None:
    async with serve() as (client, _):
        r = await client.post("/classify", files=files(uniform_image(), class_image(1)))
        body = r.json()
        ood, ok = body["results"]
        assert ood["is_ood"] is True and ood["decision"] == "rejected_ood" and ood["label"]
        assert ood["delta_energy"] < ood["threshold"] and "out-of-distribution" in ood["message"]
        assert ood["ood_p_value"] < 0.05
        assert ok["is_ood"] is False and body["num_rejected_ood"] == 1


async def test_concurrent_requests_share_one_forward() -> None:
    # max_wait is long: only a full batch runs early, so 8 single-image requests make one forward.
    async with serve(dummy_settings(max_batch_size=8, max_wait_ms=5000.0, warmup=False)) as (client, app):
        engine = engine_of(app)
        responses = await asyncio.gather(*(client.post("/classify", files=files(class_image(i % 4)))
                                           for i in range(8)))
        assert [r.status_code for r in responses] == [200] * 8
        assert engine.batch_sizes == [8]
        assert [r.json()["results"][0]["label"] for r in responses] == [f"class_{i % 4}" for i in range(8)]


async def test_a_multi_image_request_is_split_across_batches_and_reassembled() -> None:
    async with serve(dummy_settings(max_batch_size=2, max_wait_ms=1.0, warmup=False)) as (client, app):
        r = await client.post("/classify", files=files(*(class_image(i % 4) for i in range(5))))
        assert r.status_code == 200
        assert [x["label"] for x in r.json()["results"]] == [f"class_{i % 4}" for i in range(5)]
        assert sum(engine_of(app).batch_sizes) == 5 and max(engine_of(app).batch_sizes) <= 2


async def test_model_endpoint_describes_bundle_and_engine() -> None:
    async with serve() as (client, _):
        info = (await client.get("/model")).json()
        assert info["classes"] == [f"class_{i}" for i in range(4)] and info["engine"] == "dummy"
        assert info["device"] == "cpu" and info["threshold"] == pytest.approx(3.9)
        # every score's own parameters, as the bundle stores them
        assert set(info["scores"]) == {s.name for s in score_param_specs()}  # the declaration's names
        assert "quantile_values" not in info["calibration"]


async def test_openapi_docs_document_both_input_forms() -> None:
    async with serve() as (client, _):
        assert (await client.get("/docs")).status_code == 200
        spec = (await client.get("/openapi.json")).json()
        content = spec["paths"]["/classify"]["post"]["requestBody"]["content"]
        assert set(content) == {"multipart/form-data", "application/json"}


async def test_on_error_skip_answers_the_good_images_and_names_the_bad_ones() -> None:
    bad_text, truncated = b"hello, this is text", class_image(1, size=256)[:300]
    batch = files(class_image(0), bad_text, class_image(3), truncated)
    async with serve(dummy_settings(max_image_pixels=100_000)) as (client, app):
        r = await client.post("/classify", files=batch)  # the default: all or nothing, naming the bad image
        assert r.status_code == 400 and r.json()["error"]["details"] == {"index": 1, "filename": "img1.png"}
        r = await client.post("/classify?on_error=skip", files=batch)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["num_images"] == 4
        assert [(x["index"], x["label"]) for x in body["results"]] == [(0, "class_0"), (2, "class_3")]
        assert [(e["index"], e["filename"], e["status"], e["code"]) for e in body["errors"]] == [
            (1, "img1.png", 400, "invalid_image"), (3, "img3.png", 400, "invalid_image")]
        assert all(e["message"].startswith(f"image {e['index']} (img{e['index']}.png): ") for e in body["errors"])
        big = np.zeros((400, 400, 3), np.uint8)  # 160,000 pixels: over this service's limit, one image only
        r = await client.post("/classify?on_error=skip", json={"images": [b64(encode(big)), b64(class_image(2))]})
        assert [e["code"] for e in r.json()["errors"]] == ["payload_too_large"] and r.json()["results"][0]["index"] == 1
        r = await client.post("/classify?on_error=skip", files=files(bad_text))  # nothing classifiable: still 200
        assert r.status_code == 200 and r.json()["results"] == [] and len(r.json()["errors"]) == 1
        metrics = (await client.get("/metrics")).text
        assert 'deltagate_image_errors_total{code="invalid_image"} 3.0' in metrics
        assert 'deltagate_image_errors_total{code="payload_too_large"} 1.0' in metrics
        assert app.state.runtime.batcher.depth == 0  # the failed images' admission was given back
        r = await client.post("/classify?on_error=maybe", files=files(class_image(0)))
        assert r.status_code == 422


async def test_a_wrong_form_field_is_told_the_right_name() -> None:
    async with serve() as (client, _):
        r = await client.post("/classify", files=[("image", ("a.png", class_image(0), "image/png"))])
    assert r.status_code == 422
    message = r.json()["error"]["message"]
    assert "no field 'file'" in message and "'image'" in message and "-F file=@" in message

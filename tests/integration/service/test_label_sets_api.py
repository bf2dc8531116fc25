"""Label sets through the HTTP API on a real bundle with a text side (docs/label-sets.md):
ad-hoc labels, named sets (PUT / GET), the gate, limits and bad input, metrics, a second worker, old bundles."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from models.bundle import load_bundle
from models.label_set_create import VisionFeatures
from models.label_sets import read_label_set, write_label_set
from models.preprocess import decode_image, preprocess_batch
from models.text_runtime import LabelScorer, TextEncoder
from service.app import create_app
from service.settings import Settings
from tests.service_support import b64, dummy_settings, files, noise_image, running, serve

pytestmark = pytest.mark.integration

ADMIN = {"Authorization": "Bearer admin-secret"}
SHAPES = ["octagon", "pentagon", "hexagon"]


def settings(bundle: Path, sets: Path, engine: str = "onnx", **kw: object) -> Settings:
    return dummy_settings(engine=engine, bundle_path=bundle, device="cpu", label_sets_dir=sets,
                          admin_key="admin-secret", label_sets_poll_s=0.0, **kw)


def put_body(labels: list[str], examples: dict[str, list[bytes]] | None = None,
             **fields: str) -> list[tuple[str, tuple[str | None, bytes | str]]]:
    body: list[tuple[str, tuple[str | None, bytes | str]]] = [("labels", (None, label)) for label in labels]
    body += [(k, (None, v)) for k, v in fields.items()]
    for label, images in (examples or {}).items():
        body += [(f"example:{label}", (f"{label}{i}.png", im)) for i, im in enumerate(images)]
    return body


def examples(labels: list[str], n: int) -> dict[str, list[bytes]]:
    return {label: [noise_image(100 * j + i, (20, 20)) for i in range(n)] for j, label in enumerate(labels)}


@pytest.mark.parametrize("engine", ["onnx", "torch"])
async def test_ad_hoc_labels_answer_one_of_them_with_calibrated_false(text_bundle: Path, tmp_path: Path,
                                                                      engine: str) -> None:
    images = [noise_image(0), noise_image(1)]
    async with serve(settings(text_bundle, tmp_path, engine)) as (client, app):
        r = await client.post("/classify", files=files(*images), data={"labels": SHAPES})
        j = await client.post("/classify", json={"images": [b64(im) for im in images], "labels": SHAPES})
        assert r.status_code == j.status_code == 200, r.text
        body = r.json()
        assert body["label_set"] == "ad-hoc" and body["calibrated"] is False
        assert [{**res, "filename": None} for res in body["results"]] == j.json()["results"]  # multipart = JSON
        for res in body["results"]:
            assert res["label"] in SHAPES and [e["label"] for e in res["top_k"]][0] == res["label"]
            assert res["is_ood"] == (res["gate_score"] < res["threshold"])
        # the answer is models.scores on (the image's features, the labels' embeddings): the offline path
        bundle = load_bundle(text_bundle)
        feats = VisionFeatures(bundle)(preprocess_batch([decode_image(im) for im in images],
                                                        bundle.manifest.preprocess))
        want = LabelScorer(bundle).score(feats, TextEncoder(bundle).embed(SHAPES, "learned"))
        got = np.array([res["delta_energy"] for res in body["results"]])
        np.testing.assert_allclose(got, want["delta_energy"], atol=1e-3)
        rule = bundle.manifest.text.rules["learned"]  # type: ignore[union-attr]
        assert body["results"][0]["threshold"] == pytest.approx(
            np.interp(1 / 3, [1 / 4, 1 / 3, 1 / 2], rule.thresholds[::-1]))


async def test_bundle_classes_answer_as_before_with_label_set_null(text_bundle: Path, tmp_path: Path) -> None:
    async with serve(settings(text_bundle, tmp_path)) as (client, _):
        r = await client.post("/classify", files=files(noise_image(0)))
        assert r.status_code == 200 and r.json()["label_set"] is None and r.json()["calibrated"] is True
        assert r.json()["results"][0]["label"] in load_bundle(text_bundle).manifest.classes


async def test_ad_hoc_embeddings_are_cached_per_label_and_mode_and_bounded(text_bundle: Path, tmp_path: Path) -> None:
    async with serve(settings(text_bundle, tmp_path, label_cache_size=4)) as (client, app):
        sets = app.state.runtime.label_sets
        for _ in range(3):
            r = await client.post("/classify", files=files(noise_image(0)), data={"labels": SHAPES})
            assert r.status_code == 200
        assert sets.text_forwards == 3  # once per label
        await client.post("/classify", files=files(noise_image(0)), data={"labels": SHAPES, "prompts": "zero-shot"})
        assert sets.text_forwards == 6  # another prompt mode: another embedding
        await client.post("/classify", files=files(noise_image(0)), data={"labels": ["a", "b", "c", "d", "e"]})
        assert len(sets._cache) == 4  # LRU bound


@pytest.mark.parametrize(("data", "query", "status", "code", "message"), [
    ({"labels": ["octagon"]}, "", 422, "invalid_labels", "at least 2 labels"),
    ({"labels": ["octagon", "octagon"]}, "", 422, "invalid_labels", "duplicates"),
    ({"labels": ["octagon", "Octagon"]}, "", 422, "invalid_labels", "duplicates"),
    ({"labels": ["octagon", "  "]}, "", 422, "invalid_labels", "empty or only whitespace"),
    ({"labels": ["octagon", ""]}, "", 422, "invalid_labels", "empty"),
    ({"labels": ["octagon", " pentagon"]}, "", 422, "invalid_labels", "leading or trailing whitespace"),
    ({"labels": ["octagon", "x" * 101]}, "", 422, "invalid_labels", "limit is 100"),
    ({"labels": [f"l{i}" for i in range(5)]}, "", 409, "label_sets_unavailable", "covers label sets of 2 to 4"),
    ({"labels": SHAPES}, "?label_set=shapes", 422, "invalid_request", "not both"),
    ({}, "?label_set=nope", 404, "label_set_not_found", "no label set named 'nope'"),
    ({"labels": SHAPES}, "?prompts=manual", 422, "invalid_request", "prompts"),
    ({"labels": SHAPES, "prompts": "manual"}, "", 422, "invalid_request", "not available"),
    ({"prompts": "zero-shot"}, "", 422, "invalid_request", "ad-hoc labels only"),
])
async def test_bad_label_requests_get_a_clear_4xx_and_the_service_keeps_serving(
        text_bundle: Path, tmp_path: Path, data: dict, query: str, status: int, code: str, message: str) -> None:
    async with serve(settings(text_bundle, tmp_path)) as (client, _):
        r = await client.post(f"/classify{query}", files=files(noise_image(0)), data=data)
        assert r.status_code == status, r.text
        if r.json().get("error"):
            assert r.json()["error"]["code"] == code and message in r.json()["error"]["message"], r.text
        else:  # FastAPI's own query validation
            assert message in r.text
        assert (await client.post("/classify", files=files(noise_image(0)), data={"labels": SHAPES})).status_code == 200


async def test_labels_over_the_count_limit_are_refused(text_bundle: Path, tmp_path: Path) -> None:
    async with serve(settings(text_bundle, tmp_path, max_labels=3)) as (client, _):
        r = await client.post("/classify", files=files(noise_image(0)), data={"labels": ["a", "b", "c", "d"]})
        assert r.status_code == 422 and "4 labels; the limit is 3" in r.json()["error"]["message"]
        four = [f"l{i}" for i in range(4)]
        r = await client.post("/classify", json={"images": [b64(noise_image(0))], "labels": four})
        assert r.status_code == 422 and "4 labels; the limit is 3" in r.json()["error"]["message"]  # JSON: the same
        r = await client.post("/classify", json={"images": [b64(noise_image(0))], "labels": ["a"] * 2000})
        assert r.status_code == 413 and "commas" in r.json()["error"]["message"]  # bounded before it is parsed


async def test_a_file_upload_as_label_is_refused(text_bundle: Path, tmp_path: Path) -> None:
    async with serve(settings(text_bundle, tmp_path)) as (client, _):
        r = await client.post("/classify", files=[*files(noise_image(0)), ("labels", ("x.txt", b"octagon"))])
        assert r.status_code == 422 and "must be text" in r.json()["error"]["message"]


async def test_put_with_examples_calibrates_and_every_route_sees_the_set(text_bundle: Path, tmp_path: Path) -> None:
    async with serve(settings(text_bundle, tmp_path)) as (client, _):
        r = await client.put("/label-sets/shapes", files=put_body(SHAPES, examples(SHAPES, 7)), headers=ADMIN)
        assert r.status_code == 201, r.text
        info = r.json()
        assert info["calibrated"] is True and info["examples"] == dict.fromkeys(SHAPES, 7)
        assert info["calibration"]["n"] == 21 and info["source"] == "api"
        stored = read_label_set(tmp_path / "shapes.json")
        assert stored.calibration.threshold == info["threshold"] and stored.labels == SHAPES
        assert (await client.get("/label-sets/shapes")).json() == info
        listed = (await client.get("/label-sets")).json()
        assert [s["name"] for s in listed["label_sets"]] == ["shapes"] and listed["prompt_modes"] == ["learned",
                                                                                                    "zero-shot"]
        c = await client.post("/classify?label_set=shapes", files=files(noise_image(0)))
        assert c.status_code == 200 and c.json()["label_set"] == "shapes" and c.json()["calibrated"] is True
        assert c.json()["results"][0]["threshold"] == info["threshold"]
        again = await client.put("/label-sets/shapes", files=put_body(SHAPES[:2]), headers=ADMIN)
        assert again.status_code == 200 and again.json()["calibrated"] is False  # replaced: no examples
        c = await client.post("/classify?label_set=shapes", files=files(noise_image(0)))
        assert c.json()["calibrated"] is False and c.json()["results"][0]["label"] in SHAPES[:2]


async def test_put_is_behind_the_admin_key(text_bundle: Path, tmp_path: Path) -> None:
    async with serve(settings(text_bundle, tmp_path)) as (client, _):
        assert (await client.put("/label-sets/x", files=put_body(SHAPES))).status_code == 401
        r = await client.put("/label-sets/x", files=put_body(SHAPES), headers={"Authorization": "Bearer admin-secreT"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    no_admin = settings(text_bundle, tmp_path).model_copy(update={"admin_key": None})
    async with serve(no_admin) as (client, _):
        r = await client.put("/label-sets/x", files=put_body(SHAPES), headers=ADMIN)
        assert r.status_code == 403 and "DELTAGATE_ADMIN_KEY" in r.json()["error"]["message"]
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("body", "status", "message"), [
    (put_body(SHAPES, examples(["octagon"], 1)), 422, "examples are needed for every label or none"),
    (put_body(SHAPES, examples(["circle"], 1)), 422, "not in the set"),
    (put_body(["a"]), 422, "at least 2"),
    ([("labels", (None, "a")), ("labels", (None, "b")), ("colour", (None, "red"))], 422, "unknown field 'colour'"),
    (put_body(SHAPES, target_tpr="1.5"), 422, "target_tpr"),
    (put_body(SHAPES, examples(SHAPES, 4)), 413, "example images; the limit is 10"),
    (put_body(SHAPES, {"octagon": [b"\0" * 5000]} | examples(SHAPES[1:], 1)), 413, "the limit is 4096"),
    (put_body(SHAPES, {label: [b"not an image"] for label in SHAPES}), 400, "image 0"),
])
async def test_bad_puts_are_refused_and_write_nothing(text_bundle: Path, tmp_path: Path, body: list,
                                                     status: int, message: str) -> None:
    sets = tmp_path / "sets"
    async with serve(settings(text_bundle, sets, max_label_set_examples=10, max_example_bytes=4096)) as (client, _):
        r = await client.put("/label-sets/bad", files=body, headers=ADMIN)
        assert r.status_code == status and message in r.json()["error"]["message"], r.text
        assert (await client.post("/classify", files=files(noise_image(0)))).status_code == 200
    assert not sets.exists() or not list(sets.iterdir())


async def test_bad_names_and_the_set_count_limit(text_bundle: Path, tmp_path: Path) -> None:
    async with serve(settings(text_bundle, tmp_path, max_label_sets=2)) as (client, _):
        for bad in ("ad-hoc", "a%20b", "..x"):
            assert (await client.put(f"/label-sets/{bad}", files=put_body(SHAPES), headers=ADMIN)).status_code == 422
        for name in ("one", "two"):
            assert (await client.put(f"/label-sets/{name}", files=put_body(SHAPES), headers=ADMIN)).status_code == 201
        r = await client.put("/label-sets/three", files=put_body(SHAPES), headers=ADMIN)
        assert r.status_code == 409 and r.json()["error"]["code"] == "label_set_limit"
        assert (await client.put("/label-sets/two", files=put_body(SHAPES[:2]), headers=ADMIN)).status_code == 200


async def test_a_set_written_elsewhere_is_answered_without_a_restart(text_bundle: Path, tmp_path: Path) -> None:
    """Two apps on one directory stand for two workers: a PUT on one is answered by the other; a change and a
    removal are picked up too; a damaged file is reported, not served, and does not stop the others."""
    first, second = create_app(settings(text_bundle, tmp_path)), create_app(settings(text_bundle, tmp_path))
    async with running(first) as a, running(second) as b:
        assert (await b.post("/classify?label_set=shapes", files=files(noise_image(0)))).status_code == 404
        assert (await a.put("/label-sets/shapes", files=put_body(SHAPES), headers=ADMIN)).status_code == 201
        r = await b.post("/classify?label_set=shapes", files=files(noise_image(0)))
        assert r.status_code == 200 and r.json()["results"][0]["label"] in SHAPES
        assert (await a.put("/label-sets/shapes", files=put_body(["cat", "dog"]), headers=ADMIN)).status_code == 200
        r = await b.post("/classify?label_set=shapes", files=files(noise_image(0)))
        assert r.json()["results"][0]["label"] in ("cat", "dog")
        (tmp_path / "broken.json").write_text("{", encoding="utf-8")
        (tmp_path / ".shapes.123.tmp").write_text("{", encoding="utf-8")  # a crashed writer's leftover
        listed = (await b.get("/label-sets")).json()
        assert [s["name"] for s in listed["label_sets"]] == ["shapes"] and list(listed["not_loaded"]) == ["broken.json"]
        (tmp_path / "shapes.json").unlink()
        assert (await b.post("/classify?label_set=shapes", files=files(noise_image(0)))).status_code == 404


async def test_a_set_of_another_bundle_is_not_served(text_bundle: Path, tmp_path: Path) -> None:
    async with serve(settings(text_bundle, tmp_path)) as (client, _):
        await client.put("/label-sets/shapes", files=put_body(SHAPES), headers=ADMIN)
    ls = read_label_set(tmp_path / "shapes.json")
    other = ls.bundle.model_copy(update={"fingerprint": "0" * 64})
    forged = ls.model_copy(update={"bundle": other})
    write_label_set(tmp_path, forged.model_copy(update={"sha256": forged.content_hash()}))
    async with serve(settings(text_bundle, tmp_path)) as (client, _):
        assert (await client.post("/classify?label_set=shapes", files=files(noise_image(0)))).status_code == 404
        assert "not the served one" in (await client.get("/label-sets")).json()["not_loaded"]["shapes.json"]


async def test_metrics_carry_a_bounded_label_set_label(text_bundle: Path, tmp_path: Path) -> None:
    async with serve(settings(text_bundle, tmp_path, metrics_label_sets=1)) as (client, _):
        for name in ("one", "two"):
            await client.put(f"/label-sets/{name}", files=put_body(SHAPES), headers=ADMIN)
        for query in ("?label_set=one", "?label_set=two", ""):
            await client.post(f"/classify{query}", files=files(noise_image(0)))
        for i in range(5):  # five different ad-hoc sets: one label value, one class value
            await client.post("/classify", files=files(noise_image(0)), data={"labels": [f"x{i}", f"y{i}"]})
        text = (await client.get("/metrics")).text
    seen = {(s.labels["label_set"], s.labels["predicted_class"]): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples
            if s.name == "deltagate_images_classified_total"}
    assert {ls for ls, _ in seen} == {"bundle", "one", "other", "ad-hoc"}
    assert seen[("ad-hoc", "(ad-hoc)")] == 5 and seen[("other", "(other)")] == 1
    assert sum(v for (ls, _), v in seen.items() if ls == "one") == 1 and sum(
        v for (ls, _), v in seen.items() if ls == "bundle") == 1


async def test_a_bundle_without_a_text_side_serves_its_classes_and_refuses_labels(tiny_bundle: Path,
                                                                                   tmp_path: Path) -> None:
    async with serve(settings(tiny_bundle, tmp_path)) as (client, _):
        assert (await client.post("/classify", files=files(noise_image(0)))).status_code == 200
        r = await client.post("/classify", files=files(noise_image(0)), data={"labels": SHAPES})
        assert r.status_code == 409 and r.json()["error"]["code"] == "label_sets_unavailable"
        assert (await client.get("/label-sets")).status_code == 409


async def test_an_old_bundle_without_the_features_output_still_serves(tiny_bundle: Path, tmp_path: Path) -> None:
    """A bundle exported before the text side: model.onnx has the four outputs only."""
    import onnx

    from models.bundle import update_manifest

    old = tmp_path / "old"
    shutil.copytree(tiny_bundle, old)
    graph = onnx.load(str(old / "model.onnx"))
    keep = [o for o in graph.graph.output if o.name != "image_features"]
    del graph.graph.output[:]
    graph.graph.output.extend(keep)
    onnx.save(graph, str(old / "model.onnx"))
    m = load_bundle(old, verify=False).manifest
    assert m.onnx is not None
    update_manifest(old, onnx=m.onnx.model_copy(update={"output_names": m.onnx.output_names[:4]}))
    for engine in ("onnx", "torch"):
        async with serve(settings(old, tmp_path / "sets", engine)) as (client, _):
            r = await client.post("/classify", files=files(noise_image(0), noise_image(1)))
            assert r.status_code == 200 and r.json()["label_set"] is None


async def test_concurrent_ad_hoc_requests_with_different_sets(text_bundle: Path, tmp_path: Path) -> None:
    async with serve(settings(text_bundle, tmp_path)) as (client, _):
        sets = [[f"a{i}", f"b{i}", f"c{i}"] for i in range(6)]
        rs = await asyncio.gather(*[client.post("/classify", files=files(noise_image(i)), data={"labels": s})
                                    for i, s in enumerate(sets)])
        for r, s in zip(rs, sets, strict=True):
            assert r.status_code == 200 and r.json()["results"][0]["label"] in s


async def test_embedding_new_labels_counts_against_the_request_deadline(text_bundle: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import time as _time

    async with serve(settings(text_bundle, tmp_path, request_timeout_s=3.0)) as (client, app):
        slow = app.state.runtime.label_sets.encoder
        real = slow.embed
        monkeypatch.setattr(slow, "embed", lambda labels, mode: (_time.sleep(4.0), real(labels, mode))[1])
        r = await client.post("/classify", files=files(noise_image(0)), data={"labels": ["slow one", "slow two"]})
        assert r.status_code == 504 and "labels were not embedded" in r.json()["error"]["message"]
        monkeypatch.setattr(slow, "embed", real)
        assert (await client.post("/classify", files=files(noise_image(0)), data={"labels": SHAPES})).status_code == 200

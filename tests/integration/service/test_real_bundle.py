"""The service on a real tiny exported bundle, with both real engines.

Train/serve parity: an image's ΔEnergy through the HTTP service equals the offline path
(``decode_image`` -> ``preprocess_batch`` -> the bundle's float32 ``ScoringModule``, the module that
calibration and ``deltagate evaluate`` run). Tolerances: torch engine on CPU 1e-4 absolute (same
module; only the batch composition differs), ONNX engine 1e-3 absolute (the tolerance the export
itself checks).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch

from models.bundle import load_bundle
from models.preprocess import decode_image, preprocess_batch
from models.scoring_module import load_scoring_module
from tests.service_support import b64, class_image, dummy_settings, encode, files, noise_image, serve

pytestmark = pytest.mark.integration

ENGINES = ["torch", "onnx"]
PARITY_ATOL = {"torch": 1e-4, "onnx": 1e-3}


def real_settings(bundle: Path, engine: str, **kw: object):  # type: ignore[no-untyped-def]
    return dummy_settings(engine=engine, bundle_path=bundle, device="cpu", **kw)


def test_images() -> list[bytes]:
    rng = np.random.default_rng(3)
    rgba = rng.integers(0, 256, (30, 70, 4), dtype=np.uint8)
    grey = rng.integers(0, 256, (90, 45), dtype=np.uint8)
    return [noise_image(0), noise_image(1, (33, 97)), class_image(2, size=80, fmt="JPEG"),
            encode(rgba, "PNG"), encode(grey, "PNG"), encode(rng.integers(0, 256, (64, 64, 3), np.uint8), "WEBP")]


test_images.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def offline_scores(bundle: Path, images: list[bytes]) -> dict[str, np.ndarray]:
    b = load_bundle(bundle)
    module = load_scoring_module(b)
    batch = preprocess_batch([decode_image(im) for im in images], b.manifest.preprocess)  # (N, 3, H, W)
    with torch.no_grad():
        logits, probs, de, _ = module(torch.from_numpy(batch))
    return {"logits": logits.numpy(), "probs": probs.numpy(), "delta_energy": de.numpy()}


@pytest.mark.parametrize("engine", ENGINES)
async def test_happy_path_both_input_forms(tiny_bundle: Path, engine: str) -> None:
    classes = load_bundle(tiny_bundle).manifest.classes
    async with serve(real_settings(tiny_bundle, engine)) as (client, _):
        r1 = await client.post("/classify", files=files(noise_image(0), noise_image(1)))
        r2 = await client.post("/classify", json={"images": [b64(noise_image(0)), b64(noise_image(1))]})
        assert r1.status_code == r2.status_code == 200, (r1.text, r2.text)
        assert r1.json()["model"] == {"name": "micro-test", "version": "0.0.1"}
        for a, b in zip(r1.json()["results"], r2.json()["results"], strict=True):
            assert a["label"] in classes and a["label"] == b["label"]
            assert a["delta_energy"] == pytest.approx(b["delta_energy"], abs=PARITY_ATOL[engine])
            assert a["is_ood"] == (a["delta_energy"] < a["threshold"])
            assert sum(e["probability"] for e in a["top_k"]) == pytest.approx(1.0, abs=1e-4)  # 4 classes, top 5
        info = (await client.get("/model")).json()
        assert info["engine"] == engine and info["device"] == "cpu" and info["classes"] == classes
        manifest = load_bundle(tiny_bundle).manifest
        assert info["files"] == {k: v.model_dump() for k, v in manifest.files.items()}
        assert info["scores"]["delta_energy_top_c"] == manifest.scores.delta_energy_top_c == 2
        assert [(c["name"], c["ok"]) for c in info["checks"]] == [("weights", False)]  # random micro CLIP: said


async def test_the_default_bundle_says_what_it_knows_and_passes_its_checks() -> None:
    from tests.server_process import DEFAULT_BUNDLE

    async with serve(real_settings(DEFAULT_BUNDLE, "onnx")) as (client, _):
        info = (await client.get("/model")).json()
    assert "It knows only these 8 synthetic shapes" in info["description"]
    checks = {c["name"]: c for c in info["checks"]}
    assert checks["accuracy"]["ok"] and checks["gate"]["ok"] and checks["weights"]["ok"], checks


@pytest.mark.parametrize("engine", ENGINES)
async def test_train_serve_parity_of_delta_energy(tiny_bundle: Path, engine: str) -> None:
    images = test_images()
    expected = offline_scores(tiny_bundle, images)
    async with serve(real_settings(tiny_bundle, engine, max_batch_size=4)) as (client, _):
        r = await client.post("/classify", files=files(*images))
        assert r.status_code == 200, r.text
        results = r.json()["results"]
    served = np.array([x["delta_energy"] for x in results])
    np.testing.assert_allclose(served, expected["delta_energy"], rtol=0, atol=PARITY_ATOL[engine])
    assert [x["class_index"] for x in results] == expected["probs"].argmax(1).tolist()
    confidences = np.array([x["confidence"] for x in results])
    np.testing.assert_allclose(confidences, expected["probs"].max(1), atol=1e-4)


@pytest.mark.parametrize("engine", ENGINES)
async def test_concurrent_requests_share_a_forward_on_a_real_engine(tiny_bundle: Path, engine: str) -> None:
    settings = real_settings(tiny_bundle, engine, max_batch_size=4, max_wait_ms=5000.0, warmup=False)
    async with serve(settings) as (client, app):
        real = app.state.runtime.model.engine
        sizes: list[int] = []
        forward = real.infer

        def counting(x: np.ndarray) -> dict[str, np.ndarray]:
            sizes.append(x.shape[0])
            return forward(x)

        real.infer = counting  # spy on the engine itself
        responses = await asyncio.gather(*(client.post("/classify", files=files(noise_image(i))) for i in range(4)))
        assert [x.status_code for x in responses] == [200] * 4
        assert sizes == [4]

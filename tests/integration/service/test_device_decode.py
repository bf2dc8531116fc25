"""The whole HTTP stack with the device input path forced on (device_decode=on, torch engine on the CPU).

The labels and ΔEnergy equal the CPU path's (device_decode=off, same bundle, same engine) within the
tolerance measured by ``deltagate bench device-preprocess`` (docs/gpu.md): the two-pass resize differs
from PIL's by at most one grey level, which moved ΔEnergy by <= 2e-4 on the default bundle.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.settings import Settings
from tests.service_support import dummy_settings, encode, files, noise_image, serve

pytestmark = pytest.mark.integration

DELTA_ENERGY_ATOL = 1e-3  # 5x the default bundle's measured max (2.0e-4 at 12 MP); the micro model is not trained


def jpeg(arr: np.ndarray, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90, **kwargs)
    return buf.getvalue()


def images() -> list[bytes]:
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:300, 0:400]
    smooth = np.stack([x * 255 // 399, y * 255 // 299, (x + y) * 255 // 698], axis=-1).astype(np.uint8)
    smooth[100:200, 150:260] = (250, 10, 10)  # a sharp-edged block: bicubic overshoot is clipped
    cmyk = io.BytesIO()
    Image.fromarray(smooth).convert("CMYK").save(cmyk, "JPEG")
    return [jpeg(smooth), jpeg(smooth[:, ::-1].copy(), progressive=True), jpeg(rng.integers(0, 256, (50, 70, 3),
            dtype=np.uint8)), jpeg(smooth[..., 0].copy()), cmyk.getvalue(), noise_image(3)]


def settings(bundle: Path, decode: str) -> Settings:
    return dummy_settings(engine="torch", bundle_path=bundle, device="cpu", device_decode=decode, fast_decode=False)


async def test_device_decode_matches_the_cpu_path_through_http(tiny_bundle: Path) -> None:
    sent = images()
    answers = {}
    for mode in ("off", "on"):
        async with serve(settings(tiny_bundle, mode)) as (client, app):
            assert app.state.runtime.device_decode == ("cpu" if mode == "on" else "off")
            info = await client.get("/model")
            assert info.json()["batching"]["device_decode"] == app.state.runtime.device_decode
            r = await client.post("/classify", files=files(*sent))
            assert r.status_code == 200, r.text
            answers[mode] = r.json()["results"]
            if mode == "on":
                counters = app.state.runtime.device_input.counters
                assert (counters.device, counters.cpu) == (4, 2)  # 4 JPEGs on the device; CMYK + PNG on the CPU
    for cpu, dev in zip(answers["off"], answers["on"], strict=True):
        assert dev["label"] == cpu["label"] and dev["is_ood"] == cpu["is_ood"]
        assert abs(dev["delta_energy"] - cpu["delta_energy"]) <= DELTA_ENERGY_ATOL


async def test_bad_images_are_still_4xx_on_the_device_path(tiny_bundle: Path) -> None:
    good = jpeg(np.full((40, 40, 3), 90, np.uint8))
    async with serve(settings(tiny_bundle, "on").model_copy(update={"max_image_pixels": 1600})) as (client, _):
        truncated = await client.post("/classify", files=files(good, good[: len(good) // 2]))
        assert truncated.status_code == 400 and truncated.json()["error"]["details"]["index"] == 1, truncated.text
        big = await client.post("/classify", files=files(encode(np.zeros((41, 40, 3), np.uint8), "JPEG")))
        assert big.status_code == 413, big.text
        assert (await client.post("/classify", files=files(good))).status_code == 200  # still serving


def test_device_decode_on_needs_the_torch_engine() -> None:
    with pytest.raises(ValueError, match="device_decode=on needs the torch engine"):
        Settings(engine="onnx", device_decode="on")

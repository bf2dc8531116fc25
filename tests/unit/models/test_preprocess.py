"""Preprocessing equals open_clip's own eval transform, and decoding refuses bad input clearly."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image

from models.preprocess import (
    ImageDecodeError,
    ImageTooLargeError,
    PreprocessConfig,
    decode_image,
    preprocess_batch,
    preprocess_image,
)

pytestmark = pytest.mark.unit


def _png(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("size_hw", [(300, 200), (200, 300), (224, 224), (50, 80)])
@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_matches_open_clip_eval_transform(size_hw, mode):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(*size_hw, 3), dtype=np.uint8)
    img = Image.fromarray(arr).convert(mode)
    cfg = PreprocessConfig(image_size=224)
    ref = image_transform_v2(
        PreprocessCfg(size=224, mean=cfg.mean, std=cfg.std, interpolation="bicubic", resize_mode="shortest"),
        is_train=False,
    )(img)
    got = preprocess_image(img, cfg)
    assert got.shape == (3, 224, 224) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref.numpy(), atol=1e-5)


def test_palette_images_are_converted_before_resizing():
    # Deliberate difference from open_clip, which resizes a palette image before converting it to
    # RGB (so the resize falls back to nearest-neighbour): here every mode is converted first.
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, size=(60, 90, 3), dtype=np.uint8)).convert("P")
    cfg = PreprocessConfig(image_size=32)
    np.testing.assert_array_equal(preprocess_image(img, cfg), preprocess_image(img.convert("RGB"), cfg))


def test_squash_mode_ignores_aspect():
    img = Image.new("RGB", (100, 30), (255, 0, 0))
    out = preprocess_image(img, PreprocessConfig(image_size=16, resize_mode="squash", mean=(0, 0, 0), std=(1, 1, 1)))
    np.testing.assert_allclose(out[0], 1.0)


def test_batch_stacks():
    imgs = [Image.new("RGB", (40, 40)), Image.new("RGB", (64, 32))]
    assert preprocess_batch(imgs, PreprocessConfig(image_size=32)).shape == (2, 3, 32, 32)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"])
def test_decodes_supported_formats(fmt):
    img = decode_image(_png(Image.new("RGB", (20, 10), (1, 2, 3)), fmt))
    assert img.size == (20, 10)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "empty"),
        (b"hello world, not an image", "not an image"),
        (_png(Image.new("RGB", (64, 64)))[:60], "truncated or corrupt"),
    ],
)
def test_bad_bytes(data, match):
    with pytest.raises(ImageDecodeError, match=match):
        decode_image(data)


def test_unsupported_format():
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="PPM")
    with pytest.raises(ImageDecodeError, match="unsupported image format PPM"):
        decode_image(buf.getvalue())


def test_pixel_limit_checked_before_decoding():
    big = _png(Image.new("L", (3000, 3000)))
    with pytest.raises(ImageTooLargeError, match="3000x3000"):
        decode_image(big, max_pixels=1_000_000)
    assert decode_image(big, max_pixels=10_000_000).size == (3000, 3000)


def test_preprocess_is_what_torch_sees():
    img = Image.new("RGB", (32, 32), (255, 255, 255))
    out = torch.from_numpy(preprocess_image(img, PreprocessConfig(image_size=8)))
    assert torch.isfinite(out).all()

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
    decode_and_preprocess,
    decode_for_model,
    decode_image,
    preprocess_batch,
    preprocess_image,
    to_rgb,
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


def _palette_with_transparency(size: tuple[int, int] = (40, 30)) -> bytes:
    """A PNG palette image: index 0 fully transparent (stored colour: pure red), index 1 opaque blue."""
    img = Image.new("P", size, 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0, 0, 0] * 254)
    img.paste(1, (0, 0, size[0] // 2, size[1]))
    buf = io.BytesIO()
    img.save(buf, "PNG", transparency=0)
    return buf.getvalue()


def test_transparent_palette_images_composite_over_white_without_a_pillow_warning(recwarn):
    img = decode_image(_palette_with_transparency())
    assert img.mode == "P" and "transparency" in img.info
    rgb = np.asarray(to_rgb(img))
    np.testing.assert_array_equal(rgb[0, 0], [0, 0, 255])  # opaque pixel keeps its colour
    np.testing.assert_array_equal(rgb[0, -1], [255, 255, 255])  # transparent one: the background, not red
    preprocess_image(img, PreprocessConfig(image_size=16))
    assert not [w for w in recwarn if "Transparency" in str(w.message)]


def test_alpha_is_composited_over_white_by_the_standard_formula():
    rng = np.random.default_rng(2)
    rgba = rng.integers(0, 256, (20, 24, 4), dtype=np.uint8)
    got = np.asarray(to_rgb(Image.fromarray(rgba, "RGBA"))).astype(np.float64)
    a = rgba[..., 3:4] / 255.0
    expected = rgba[..., :3] * a + 255.0 * (1 - a)  # out = colour * alpha + background * (1 - alpha)
    np.testing.assert_allclose(got, expected, atol=1.01)  # Pillow rounds in 8 bits
    la = Image.fromarray(rgba[..., [0, 3]], "LA")
    np.testing.assert_allclose(np.asarray(to_rgb(la))[..., 0],
                               rgba[..., 0] * a[..., 0] + 255 * (1 - a[..., 0]), atol=1.01)


def _photo_jpeg(width: int, height: int) -> bytes:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    arr = np.stack([x / width * 255, y / height * 255, 128 + 60 * np.sin(x / 37) * np.cos(y / 23)], -1)
    buf = io.BytesIO()
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def test_fast_decode_reduces_large_jpegs_but_keeps_twice_the_model_input():
    data = _photo_jpeg(4000, 3000)
    full, fast = decode_image(data), decode_image(data, min_side=224)
    assert full.size == (4000, 3000)
    assert min(fast.size) >= 2 * 224 and fast.size == (1000, 750)  # 1/4 DCT scale: 750 >= 448 > 375
    cfg = PreprocessConfig(image_size=224)
    diff = np.abs(preprocess_image(fast, cfg) - preprocess_image(full, cfg))  # normalised units (~1/0.27)
    assert diff.mean() < 0.02 and diff.max() < 0.5


def test_fast_decode_leaves_small_jpegs_and_other_formats_alone():
    small = _photo_jpeg(600, 400)  # 400 < 2 x 2 x 224: no halving keeps 448
    assert decode_image(small, min_side=224).size == (600, 400)
    png = _png(Image.new("RGB", (3000, 2000)))
    assert decode_image(png, min_side=224).size == (3000, 2000)


def test_decode_and_preprocess_is_the_fast_decode_policy_then_the_exact_preprocessing():
    """The one function every caller runs: fast = a reduced decode to 2x the model's input size, else full size."""
    data, cfg = _photo_jpeg(4000, 3000), PreprocessConfig(image_size=224)
    assert decode_for_model(data, cfg, fast=True).size == decode_image(data, min_side=224).size == (1000, 750)
    assert decode_for_model(data, cfg).size == (4000, 3000)
    for fast in (False, True):
        expected = preprocess_image(decode_image(data, min_side=224 if fast else None), cfg)
        np.testing.assert_array_equal(decode_and_preprocess(data, cfg, fast=fast), expected)
    with pytest.raises(ImageTooLargeError):
        decode_and_preprocess(data, cfg, max_pixels=1000 * 1000, fast=True)  # the header check comes first


@pytest.mark.parametrize("size", [(300, 200), (200, 300), (1, 50), (50, 1), (224, 224), (1000, 333)])
def test_resized_size_is_torchvisions_resize(size):
    from torchvision.transforms import Resize

    from models.preprocess import resized_size

    img = Image.new("L", size)
    assert resized_size(*size, PreprocessConfig(image_size=224)) == Resize(224)(img).size
    assert resized_size(*size, PreprocessConfig(image_size=224, resize_mode="squash")) == (224, 224)


def test_shape_limits_are_checked_from_the_header_only():
    import struct

    from deltagate.bench.hostile import PNG_SIGNATURE, png_chunk
    from models.preprocess import ImageShapeError, ShapeLimits, open_image

    def header_only(width: int, height: int) -> bytes:  # a PNG whose image data is empty
        ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
        return PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", b"") + png_chunk(b"IEND", b"")

    shape = ShapeLimits(PreprocessConfig(image_size=32), max_aspect_ratio=4.0, max_resized_pixels=3200)
    assert open_image(header_only(40, 120), shape=shape).size == (40, 120)  # 3:1, resized 32x96 = 3072
    with pytest.raises(ImageShapeError, match="1x100000 pixels: its aspect ratio 100000.0:1"):
        open_image(header_only(1, 100_000), shape=shape)
    with pytest.raises(ImageShapeError, match="aspect ratio 4.0:1 is over the limit of 4:1"):
        open_image(header_only(40, 161), shape=shape)
    with pytest.raises(ImageTooLargeError, match="32x128, over the limit of 3200"):
        open_image(header_only(40, 160), shape=shape)  # 4:1 passes, its resize does not
    assert open_image(header_only(1, 100_000)).size == (1, 100_000)  # training and evaluation: unchecked

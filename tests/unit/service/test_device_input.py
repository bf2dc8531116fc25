"""Device input pipeline on device="cpu": same pixels as the CPU path, routing, fallback and errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from models.preprocess import ImageDecodeError, ImageTooLargeError, PreprocessConfig, preprocess_image
from service.device_input import DeviceInput, decode_on_device, preprocess_tensor, read_header, stack_pixels

pytestmark = pytest.mark.unit

CFG = PreprocessConfig(image_size=32)
# One grey level after normalisation: the float antialiased resize vs PIL's 8-bit one (measured bound).
ONE_LEVEL = 1.0 / 255.0 / min(CFG.std) + 1e-5


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth image with edges (gradients + a disc), like a drawing, not white noise."""
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(seed)
    r = (x / max(width - 1, 1) * 255).astype(np.uint8)
    g = (y / max(height - 1, 1) * 255).astype(np.uint8)
    cx, cy = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height
    # a black/white disc: bicubic overshoots at its edge, which PIL clips between its two passes
    b = np.where((x - cx) ** 2 + (y - cy) ** 2 < (min(width, height) / 3) ** 2, 255, 0).astype(np.uint8)
    return Image.fromarray(np.stack([r, g, b], axis=-1))


def encode(img: Image.Image, fmt: str = "JPEG", **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


@pytest.mark.parametrize("size", [(32, 32), (300, 200), (200, 300), (50, 40), (20, 12), (999, 1000)])
@pytest.mark.parametrize("cfg", [CFG, CFG.model_copy(update={"interpolation": "bilinear"}),
                                 CFG.model_copy(update={"resize_mode": "squash"})],
                         ids=["bicubic", "bilinear", "squash"])
def test_preprocess_tensor_matches_pil_path_within_one_grey_level(size: tuple[int, int], cfg: PreprocessConfig) -> None:
    img = photo(*size)
    ref = preprocess_image(img, cfg)  # (3, S, S) the CPU path
    got = preprocess_tensor(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1), cfg).numpy()
    assert got.shape == ref.shape == (3, cfg.image_size, cfg.image_size)
    assert np.abs(got - ref).max() <= ONE_LEVEL
    if size == (32, 32):  # no resize: only the normalisation, same float32 formula
        np.testing.assert_allclose(got, ref, atol=1e-6)


@pytest.mark.parametrize("size", [(300, 200), (50, 40), (37, 91)])
def test_nearest_is_pils_nearest_exactly(size: tuple[int, int]) -> None:
    cfg = CFG.model_copy(update={"interpolation": "nearest"})
    img = photo(*size)
    got = preprocess_tensor(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1), cfg).numpy()
    np.testing.assert_allclose(got, preprocess_image(img, cfg), atol=1e-6)


def test_jpeg_kinds_take_the_device_path_others_the_cpu_path() -> None:
    img = photo(120, 90)
    images = {"rgb": encode(img, quality=90), "gray": encode(img.convert("L")),
              "progressive": encode(img, progressive=True), "cmyk": encode(img.convert("CMYK")),
              "png": encode(img, "PNG"), "webp": encode(img, "WEBP")}
    dev = DeviceInput(CFG, "cpu", max_pixels=10**7, fast_decode=False)
    out = dict(zip(images, dev.prepare(list(images.values())), strict=True))
    assert {k for k, v in out.items() if isinstance(v, torch.Tensor)} == {"rgb", "gray", "progressive"}
    assert {k for k, v in out.items() if isinstance(v, np.ndarray)} == {"cmyk", "png", "webp"}
    assert (dev.counters.device, dev.counters.cpu, dev.counters.refused) == (3, 3, 0)
    for name, data in images.items():  # every one equals the CPU path (libjpeg-turbo on both sides here)
        ref = preprocess_image(Image.open(io.BytesIO(data)), CFG)
        got = out[name]
        got_np = got.numpy() if isinstance(got, torch.Tensor) else got
        assert np.abs(got_np - ref).max() <= ONE_LEVEL, name


def test_a_refused_batch_is_retried_per_image_and_refused_images_take_the_cpu_path() -> None:
    good, bad = encode(photo(64, 48, 1)), encode(photo(64, 48, 2))
    bad_tensor_len = len(bad)

    def picky(encoded: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        if any(len(e) == bad_tensor_len for e in encoded):
            raise RuntimeError("nvJPEG: JPEG not supported")
        return decode_on_device(encoded, device)

    assert len(good) != len(bad)
    dev = DeviceInput(CFG, "cpu", max_pixels=10**7, decoder=picky)
    first, second, third = dev.prepare([good, bad, good])
    assert isinstance(first, torch.Tensor) and isinstance(third, torch.Tensor)
    assert isinstance(second, np.ndarray)  # the CPU path took it
    np.testing.assert_allclose(second, preprocess_image(Image.open(io.BytesIO(bad)), CFG), atol=1e-6)
    assert (dev.counters.device, dev.counters.cpu, dev.counters.refused) == (2, 0, 1)


def test_bad_images_come_back_as_their_errors_and_do_not_spoil_the_others() -> None:
    good = encode(photo(64, 48))
    truncated = good[: len(good) // 2]
    dev = DeviceInput(CFG, "cpu", max_pixels=64 * 48)
    out = dev.prepare([b"", b"not an image", truncated, encode(photo(65, 48)), encode(photo(8, 8), "ICO"), good])
    assert [type(o).__name__ for o in out] == ["ImageDecodeError", "ImageDecodeError", "ImageDecodeError",
                                              "ImageTooLargeError", "ImageDecodeError", "Tensor"]
    assert "truncated" in str(out[2]) and "ICO" in str(out[4])


def test_header_checks_read_no_pixels() -> None:
    header = read_header(encode(photo(40, 30), progressive=True), max_pixels=1200)
    assert (header.format, header.mode, header.width, header.height) == ("JPEG", "RGB", 40, 30)
    assert header.progressive and header.device_decodable
    with pytest.raises(ImageTooLargeError):
        read_header(encode(photo(41, 30)), max_pixels=1200)
    with pytest.raises(ImageDecodeError):
        read_header(b"\xff\xd8\xff", max_pixels=1200)


def test_stack_pixels_mixes_cpu_arrays_and_device_tensors_in_order_with_zero_padding() -> None:
    a, b, c = (np.full((3, 4, 4), v, np.float32) for v in (1.0, 2.0, 3.0))
    batch = stack_pixels([a, torch.from_numpy(b), c], torch.device("cpu"), pad_to=4)
    assert batch.shape == (4, 3, 4, 4) and batch.dtype == torch.float32
    assert batch[:, 0, 0, 0].tolist() == [1.0, 2.0, 3.0, 0.0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (nvJPEG)")
def test_nvjpeg_path_stays_on_the_gpu_and_close_to_the_cpu_path() -> None:  # pragma: no cover - GPU only
    images = [encode(photo(640, 480, s), quality=90) for s in range(3)] + [encode(photo(64, 48).convert("CMYK"))]
    dev = DeviceInput(CFG, "cuda", max_pixels=10**7, fast_decode=False)
    out = dev.prepare(images)
    assert all(isinstance(o, torch.Tensor) and o.is_cuda for o in out[:3]) and isinstance(out[3], np.ndarray)
    for data, got in zip(images[:3], out[:3], strict=True):
        ref = preprocess_image(Image.open(io.BytesIO(data)), CFG)
        diff = np.abs(got.cpu().numpy() - ref)  # type: ignore[union-attr]
        # nvJPEG's IDCT and chroma upsampling differ from libjpeg-turbo's: a few grey levels, rarely more
        assert diff.mean() <= 2 * ONE_LEVEL and diff.max() <= 16 * ONE_LEVEL
    batch = stack_pixels([o for o in out if not isinstance(o, BaseException)], torch.device("cuda"), pad_to=8,
                         pinned=True)
    assert batch.is_cuda and batch.shape == (8, 3, 32, 32)

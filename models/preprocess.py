"""Image decoding and preprocessing: the one definition shared by evaluation and serving.

The bundle carries a :class:`PreprocessConfig`; ``deltagate evaluate`` and the service both call
:func:`preprocess_image` with it, so an image is turned into the same tensor offline and online.
It reproduces open_clip's eval transform (resize the shortest side with PIL, centre crop, scale to
[0, 1], normalise) with PIL and NumPy only, so the ONNX service path needs no torchvision. Two
deliberate differences:

- images are converted to RGB *before* resizing (open_clip converts after, which resizes palette
  images with nearest-neighbour);
- transparency is handled by one documented conversion, :func:`to_rgb`: an image with an alpha
  channel or a transparent palette/colour key is composited over :data:`TRANSPARENT_BACKGROUND`
  (white). Training, evaluation and serving all call it, and it never triggers Pillow's "palette
  images with transparency should be converted to RGBA" warning.

Fast decode (serving only): :func:`decode_image` with ``min_side`` decodes a JPEG much larger
than the model input at a reduced DCT scale (Pillow's draft mode: 1/2, 1/4 or 1/8, done inside
libjpeg), keeping the shortest side at least ``DRAFT_MARGIN`` x ``min_side``; the exact resize and
crop then run on that image. ``deltagate bench decode`` measures what it changes.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "PreprocessConfig",
    "ImageDecodeError",
    "ImageTooLargeError",
    "ImageShapeError",
    "ShapeLimits",
    "SUPPORTED_FORMATS",
    "IMAGE_EXTENSIONS",
    "TRANSPARENT_BACKGROUND",
    "DRAFT_MARGIN",
    "DEFAULT_MAX_PIXELS",
    "open_image",
    "decode_image",
    "resized_size",
    "to_rgb",
    "preprocess_image",
    "preprocess_batch",
    "decode_for_model",
    "decode_and_preprocess",
]

# Pixel count above which an image is refused from its header (the service's default limit too).
DEFAULT_MAX_PIXELS = 40_000_000
# Formats the service accepts; everything else is refused rather than guessed at.
SUPPORTED_FORMATS: frozenset[str] = frozenset({"PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"})
# File name endings of those formats: what folder readers (offline data, `deltagate classify`) take as images.
IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

_INTERPOLATIONS = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}


# Colour under transparent pixels: white, as image viewers and browsers show transparent clipart.
TRANSPARENT_BACKGROUND: tuple[int, int, int] = (255, 255, 255)
# A draft-decoded JPEG keeps its shortest side >= DRAFT_MARGIN x the model input, so the exact
# bicubic resize still reduces by at least 2x (`deltagate bench decode` measures the agreement).
DRAFT_MARGIN = 2
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


class PreprocessConfig(BaseModel):
    """Eval-time preprocessing of a model; stored in the bundle manifest."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    image_size: int = Field(224, gt=0)  # side of the square input the vision tower expects
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP RGB mean
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)  # OpenAI CLIP RGB std
    interpolation: Literal["bicubic", "bilinear", "nearest"] = "bicubic"  # open_clip's default
    # "shortest": resize the shortest side to image_size, then centre crop (open_clip's default);
    # "squash": resize both sides to image_size, ignoring the aspect ratio.
    resize_mode: Literal["shortest", "squash"] = "shortest"


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image of a supported format."""


class ImageTooLargeError(ValueError):
    """The image has more pixels than allowed (decompression-bomb guard), or its resize would make too many."""


class ImageShapeError(ImageDecodeError):
    """The image's aspect ratio is beyond what the service takes (a 1x100000 strip)."""


def resized_size(width: int, height: int, cfg: PreprocessConfig) -> tuple[int, int]:
    """The size the resize of :func:`preprocess_image` makes, before its centre crop.

    Shortest-side mode follows torchvision's ``Resize(int)`` on a PIL image (the short side becomes
    ``image_size``, the long side keeps the aspect ratio, truncated); squash mode gives the square.
    """
    size = cfg.image_size
    if cfg.resize_mode == "squash":
        return size, size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


@dataclass(frozen=True)
class ShapeLimits:
    """Bounds on an image's shape that keep its preprocessing cheap, checked from the header.

    The pixel limit alone does not bound the work: the resize scales the *short* side to
    ``image_size``, so a 277-byte PNG of 1x100000 pixels would become 224x22,400,000 before the
    crop (gigabytes, seconds; 1x39,000,000 overflows Pillow). Both checks need only the header's
    width and height, so such an image is refused in microseconds, before any pixel is decoded.

    Args:
        cfg: the bundle's preprocessing (image size and resize mode).
        max_aspect_ratio: largest long side / short side.
        max_resized_pixels: largest width * height of the resized image (before its crop).
    """

    cfg: PreprocessConfig
    max_aspect_ratio: float
    max_resized_pixels: int

    def check(self, width: int, height: int) -> None:
        """Raises :class:`ImageShapeError` or :class:`ImageTooLargeError` for an image of this size."""
        short, long = min(width, height), max(width, height)
        if short < 1 or long > self.max_aspect_ratio * short:
            raise ImageShapeError(
                f"image is {width}x{height} pixels: its aspect ratio {long / max(short, 1):.1f}:1 is over the limit "
                f"of {self.max_aspect_ratio:g}:1"
            )
        new_w, new_h = resized_size(width, height, self.cfg)
        if new_w * new_h > self.max_resized_pixels:
            raise ImageTooLargeError(
                f"image is {width}x{height} pixels: resized for the model it would be {new_w}x{new_h}, over the "
                f"limit of {self.max_resized_pixels} pixels"
            )


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, shape: ShapeLimits | None = None) -> Image.Image:
    """Open image bytes lazily (the header only), checking format, pixel count and shape; no pixel is decoded.

    The one set of input checks: :func:`decode_image` and the service's device input path
    (``service.device_input``) both start here, so they refuse the same images with the same errors.

    Args:
        data: encoded image bytes.
        max_pixels: largest width * height accepted.
        shape: aspect-ratio and resized-size limits (the service's); None: unchecked (training, evaluation).

    Returns:
        The opened, not yet loaded, image.

    Raises:
        ImageDecodeError: empty, not an image, or an unsupported format.
        ImageShapeError: an aspect ratio over ``shape``'s limit.
        ImageTooLargeError: more than ``max_pixels`` pixels, or a resized size over ``shape``'s limit.
    """
    if not data:
        raise ImageDecodeError("empty image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"image rejected as a decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageDecodeError("not an image (format not recognised)") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"image could not be decoded (truncated or corrupt): {exc}") from exc
    fmt = img.format or "unknown"
    if fmt not in SUPPORTED_FORMATS:
        raise ImageDecodeError(f"unsupported image format {fmt}; supported: {', '.join(sorted(SUPPORTED_FORMATS))}")
    width, height = img.size
    if width * height > max_pixels:
        raise ImageTooLargeError(f"image is {width}x{height} pixels; the limit is {max_pixels} pixels")
    if shape is not None:
        shape.check(width, height)
    return img


def decode_image(
    data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = None, shape: ShapeLimits | None = None
) -> Image.Image:
    """Decode image bytes, checking format and pixel count before the pixels are decoded (:func:`open_image`).

    Args:
        data: encoded image bytes.
        max_pixels: largest width * height accepted; read from the header, before decoding.
        min_side: if given, a JPEG is decoded at the smallest DCT scale whose shortest side is
            still >= ``DRAFT_MARGIN * min_side`` (full size when it is not that large). None:
            always full size (training and evaluation).
        shape: aspect-ratio and resized-size limits, checked from the header (see :class:`ShapeLimits`).

    Returns:
        The decoded image (fully loaded, any mode).

    Raises:
        ImageDecodeError: not an image, truncated, or an unsupported format.
        ImageShapeError: an aspect ratio over ``shape``'s limit.
        ImageTooLargeError: more than ``max_pixels`` pixels, a resized size over ``shape``'s limit, or a
            size Pillow cannot represent or allocate (its ``OverflowError``, ``MemoryError``).
    """
    img = open_image(data, max_pixels, shape)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if min_side is not None and img.format == "JPEG":
                _draft(img, DRAFT_MARGIN * min_side)
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"image rejected as a decompression bomb: {exc}") from exc
    except (OverflowError, MemoryError) as exc:  # a size past Pillow's C integers, or an allocation it refused
        raise ImageTooLargeError(f"image is too large for the decoder: {type(exc).__name__} {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageDecodeError(f"image could not be decoded (truncated or corrupt): {exc}") from exc
    return img


def _draft(img: Image.Image, keep_side: int) -> None:
    """Ask libjpeg for a reduced-scale decode keeping the shortest side >= ``keep_side``."""
    width, height = img.size
    scale = keep_side / min(width, height)
    if scale <= 0.5:  # at least one halving is possible
        img.draft(img.mode, (math.ceil(width * scale), math.ceil(height * scale)))  # Pillow keeps >= this


def to_rgb(img: Image.Image) -> Image.Image:
    """The one conversion to RGB, used by training, evaluation and serving.

    Images with transparency (an alpha channel, a palette with transparent entries, or a
    transparent colour key) are converted to RGBA and composited over
    :data:`TRANSPARENT_BACKGROUND`; every other mode is converted directly.
    """
    if img.mode == "RGB":
        return img
    if img.mode not in _ALPHA_MODES and "transparency" not in img.info:
        return img.convert("RGB")
    rgba = img.convert("RGBA")  # P/L/RGB with a transparency key -> real alpha (no Pillow warning)
    background = Image.new("RGBA", rgba.size, (*TRANSPARENT_BACKGROUND, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _resize(img: Image.Image, cfg: PreprocessConfig) -> Image.Image:
    size, resample = cfg.image_size, _INTERPOLATIONS[cfg.interpolation]
    if cfg.resize_mode == "squash":
        return img.resize((size, size), resample=resample)
    width, height = img.size
    new_w, new_h = resized_size(width, height, cfg)
    if (new_w, new_h) != (width, height):
        img = img.resize((new_w, new_h), resample=resample)
    left = int(round((new_w - size) / 2.0))  # torchvision CenterCrop rounding
    top = int(round((new_h - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def preprocess_image(img: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """Turn one image into the normalised tensor the scoring module takes.

    Args:
        img: a PIL image of any mode and size.
        cfg: the bundle's preprocessing.

    Returns:
        float32 array of shape (3, image_size, image_size).

    Raises:
        ImageTooLargeError: the resize would pass Pillow's C integers or its allocation failed (a
            1x39,000,000 strip; the service refuses such shapes from the header first, :class:`ShapeLimits`).
    """
    try:
        img = _resize(to_rgb(img), cfg)
    except (OverflowError, MemoryError) as exc:  # Pillow refused the size; nothing was allocated
        raise ImageTooLargeError(
            f"image of {img.width}x{img.height} pixels cannot be resized: {type(exc).__name__} {exc}"
        ) from exc
    arr = np.asarray(img, dtype=np.float32) / 255.0  # (H, W, 3)
    mean = np.asarray(cfg.mean, dtype=np.float32)
    std = np.asarray(cfg.std, dtype=np.float32)
    arr = (arr - mean) / std  # (H, W, 3)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))  # (3, H, W)


def preprocess_batch(images: Sequence[Image.Image], cfg: PreprocessConfig) -> np.ndarray:
    """Preprocess several images into one batch.

    Args:
        images: PIL images.
        cfg: the bundle's preprocessing.

    Returns:
        float32 array of shape (B, 3, image_size, image_size).
    """
    return np.stack([preprocess_image(im, cfg) for im in images])  # (B, 3, H, W)


def decode_for_model(data: bytes, cfg: PreprocessConfig, max_pixels: int = DEFAULT_MAX_PIXELS,
                     fast: bool = False, shape: ShapeLimits | None = None) -> Image.Image:
    """Decode image bytes for a model with this preprocessing: the one place the fast-decode policy lives.

    Args:
        data: encoded image bytes.
        cfg: the bundle's preprocessing.
        max_pixels: largest width * height accepted (checked from the header, before decoding).
        fast: decode a large JPEG at reduced DCT scale, keeping its shortest side >= ``DRAFT_MARGIN``
            x ``cfg.image_size`` (serving); False: full size (training and evaluation).
        shape: the service's shape limits, checked from the header (:class:`ShapeLimits`); None: unchecked.

    Returns:
        The decoded image (any mode, any size).

    Raises:
        ImageDecodeError: not an image, truncated, or an unsupported format (ImageShapeError: too elongated).
        ImageTooLargeError: more than ``max_pixels`` pixels, or a resize over the shape limit.
    """
    return decode_image(data, max_pixels, min_side=cfg.image_size if fast else None, shape=shape)


def decode_and_preprocess(data: bytes, cfg: PreprocessConfig, max_pixels: int = DEFAULT_MAX_PIXELS,
                          fast: bool = False, shape: ShapeLimits | None = None) -> np.ndarray:
    """Image bytes -> the normalised tensor the scoring module takes (:func:`decode_for_model`, then
    :func:`preprocess_image`): what the service, its device input's CPU path and the benchmarks run per image.

    Returns:
        float32 array of shape (3, image_size, image_size).

    Raises:
        ImageDecodeError: not an image, truncated, or an unsupported format (ImageShapeError: too elongated).
        ImageTooLargeError: more than ``max_pixels`` pixels, or a resize over the shape limit.
    """
    return preprocess_image(decode_for_model(data, cfg, max_pixels, fast, shape), cfg)  # (3, S, S)

"""Device input pipeline: decode JPEGs and preprocess them on the engine's device.

On a GPU the model is no longer the bottleneck: decoding a 12 MP JPEG on one CPU core takes longer
than a ViT-B/16 batch. This module decodes JPEG bytes with torchvision's ``decode_jpeg`` on the
engine's device (nvJPEG on CUDA) and runs the bundle's :class:`~models.preprocess.PreprocessConfig`
there: resize (shortest side or squash, PIL's interpolation kernels through
``F.interpolate(..., antialias=True)``, which uses PIL's bicubic coefficient a=-0.5, in PIL's two
separable 8-bit passes), centre crop
with torchvision's rounding, scale to [0, 1], normalise. On ``device="cpu"`` the same code runs,
so CI tests the whole path without a GPU.

What stays on the CPU path (:func:`models.preprocess.decode_and_preprocess`, the service's own):

- every other format (PNG, WebP, GIF, BMP, TIFF), and CMYK/YCCK JPEGs (nvJPEG has no CMYK
  output; PIL's conversion is the reference);
- any JPEG the device decoder refuses (e.g. a progressive or unusual-subsampling JPEG nvJPEG cannot
  take): the CPU decoder then decides, so a corrupt file is still a 400, never a 500.

Checks happen before any pixel is decoded, exactly as on the CPU path: the header is read with PIL
(format, size, colour mode), so the format allow-list and the pixel limit answer the same errors.

Parity with the CPU path is measured, not assumed (``deltagate bench device-preprocess``,
docs/gpu.md): the two-pass antialiased float resize differs from PIL's 8-bit fixed-point resize by
at most one grey level per pixel before normalisation. Differences of nvJPEG's IDCT/upsampling from
libjpeg-turbo are only measurable on a GPU (the prepared GPU run records them).
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from models.preprocess import (
    ImageDecodeError,
    ImageTooLargeError,
    PreprocessConfig,
    ShapeLimits,
    decode_and_preprocess,
    open_image,
    resized_size,
)

__all__ = ["DeviceDecodeMode", "DeviceInput", "HeaderInfo", "read_header", "resize_geometry", "preprocess_tensor",
           "stack_pixels", "decode_on_device", "device_input_for", "batch_stacker"]

logger = logging.getLogger(__name__)

DeviceDecodeMode = Literal["auto", "on", "off"]
# JPEG colour modes the device decoder takes; CMYK (and Adobe YCCK, which PIL opens as CMYK) stays on the CPU.
_DEVICE_MODES = frozenset({"RGB", "L"})
# The device decoder: (list of uint8 byte tensors, device) -> list of (3, h, w) uint8 tensors on it.
Decoder = Callable[[list[torch.Tensor], torch.device], list[torch.Tensor]]


@dataclass(frozen=True)
class HeaderInfo:
    """What the header says, read without decoding pixels."""

    format: str  # PIL's format name, e.g. "JPEG"
    mode: str  # PIL's colour mode, e.g. "RGB", "L", "CMYK"
    width: int
    height: int
    progressive: bool

    @property
    def device_decodable(self) -> bool:
        """JPEG in a colour mode the device decoder converts to RGB."""
        return self.format == "JPEG" and self.mode in _DEVICE_MODES


def read_header(data: bytes, max_pixels: int, shape: ShapeLimits | None = None) -> HeaderInfo:
    """Format, mode and size from the header, with the checks and errors of the CPU path (``open_image``).

    Raises:
        ImageDecodeError: empty, not an image, an unsupported format, or an aspect ratio over ``shape``'s.
        ImageTooLargeError: more than ``max_pixels`` pixels, or a resized size over ``shape``'s limit.
    """
    img = open_image(data, max_pixels, shape)
    progressive = bool(img.info.get("progressive") or img.info.get("progression"))
    return HeaderInfo(img.format or "unknown", img.mode, img.width, img.height, progressive)


def resize_geometry(width: int, height: int, cfg: PreprocessConfig) -> tuple[int, int, int, int]:
    """(resized width, resized height, crop left, crop top), the arithmetic of ``models.preprocess._resize``.

    Shortest-side mode follows torchvision's ``Resize(int)`` on a PIL image and ``CenterCrop``'s rounding;
    squash mode resizes both sides to ``image_size`` (no crop).
    """
    size = cfg.image_size
    new_w, new_h = resized_size(width, height, cfg)
    return new_w, new_h, int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))


def _nearest(x: torch.Tensor, new_h: int, new_w: int) -> torch.Tensor:
    """PIL's nearest-neighbour sampling: source index floor((i + 0.5) * in / out), in float64."""
    _, _, h, w = x.shape
    rows = torch.floor((torch.arange(new_h, dtype=torch.float64) + 0.5) * (h / new_h)).long().clamp_(max=h - 1)
    cols = torch.floor((torch.arange(new_w, dtype=torch.float64) + 0.5) * (w / new_w)).long().clamp_(max=w - 1)
    return x[:, :, rows.to(x.device)][:, :, :, cols.to(x.device)]  # (1, 3, new_h, new_w)


def _pil_resize(x: torch.Tensor, new_h: int, new_w: int, mode: str) -> torch.Tensor:
    """PIL's separable resize of an 8-bit image: horizontal pass, then vertical, each rounded to 0..255.

    The rounding and clipping between the passes matter: a bicubic overshoot at a sharp edge is
    clipped after the first pass in PIL; one 2-D ``interpolate`` keeps it and differs by several grey
    levels there, two passes by at most one (tests/unit/service/test_device_input.py has such an edge).
    """
    _, _, h, w = x.shape
    if new_w != w:
        x = F.interpolate(x, size=(h, new_w), mode=mode, align_corners=False, antialias=True)  # (1, 3, h, new_w)
        x = x.round_().clamp_(0.0, 255.0)
    if new_h != h:
        x = F.interpolate(x, size=(new_h, new_w), mode=mode, align_corners=False, antialias=True)  # (1, 3, nh, nw)
        x = x.round_().clamp_(0.0, 255.0)
    return x


def preprocess_tensor(image: torch.Tensor, cfg: PreprocessConfig) -> torch.Tensor:
    """The bundle's preprocessing of one decoded image, on the image's device.

    Args:
        image: uint8 (3, h, w) RGB.
        cfg: the bundle's preprocessing.

    Returns:
        float32 (3, image_size, image_size), normalised.
    """
    _, h, w = image.shape
    new_w, new_h, left, top = resize_geometry(w, h, cfg)
    x = image.unsqueeze(0).float()  # (1, 3, h, w), 0..255
    if (new_w, new_h) != (w, h):
        if cfg.interpolation == "nearest":
            x = _nearest(x, new_h, new_w)  # (1, 3, new_h, new_w)
        else:
            x = _pil_resize(x, new_h, new_w, cfg.interpolation)  # (1, 3, new_h, new_w)
    size = cfg.image_size
    x = x[0, :, top:top + size, left:left + size]  # (3, S, S)
    mean = torch.tensor(cfg.mean, dtype=torch.float32, device=x.device).view(3, 1, 1)
    std = torch.tensor(cfg.std, dtype=torch.float32, device=x.device).view(3, 1, 1)
    return (x / 255.0 - mean) / std  # (3, S, S)


def decode_on_device(encoded: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """torchvision's JPEG decoder to RGB on ``device`` (nvJPEG on CUDA, libjpeg-turbo on the CPU)."""
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its codecs for TorchCodec (docs/gpu.md)
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_jpeg

    decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device)
    return list(decoded)


def stack_pixels(items: Sequence[np.ndarray | torch.Tensor], device: torch.device, pad_to: int | None = None,
                 pinned: bool = False) -> torch.Tensor:
    """One batch on ``device`` from CPU arrays and device tensors, zero-padded to ``pad_to`` rows.

    CPU arrays are stacked first (in a pinned buffer when ``pinned``, so the copy to the GPU is
    asynchronous), then moved in one copy; device tensors are stacked where they are.

    Args:
        items: (3, H, W) float32 each, NumPy (CPU path) or torch (device path).
        device: where the batch goes.
        pad_to: rows of the result (>= len(items)); None = len(items).
        pinned: stage CPU arrays in page-locked memory (CUDA only).

    Returns:
        float32 (pad_to, 3, H, W) on ``device``.
    """
    n = len(items)
    rows = pad_to or n
    shape = tuple(items[0].shape)
    host = [i for i, it in enumerate(items) if isinstance(it, np.ndarray)]
    out = torch.zeros((rows, *shape), dtype=torch.float32, device=device)  # (rows, 3, H, W)
    if host:
        staged = torch.empty((len(host), *shape), dtype=torch.float32, pin_memory=pinned)  # (h, 3, H, W)
        np.stack([items[i] for i in host], out=staged.numpy())  # (h, 3, H, W) straight into the staging buffer
        out[torch.tensor(host, device=device)] = staged.to(device, non_blocking=pinned)
    for i, it in enumerate(items):
        if isinstance(it, torch.Tensor):
            out[i] = it.to(device)
    return out


@dataclass
class _Counters:
    """How images went (for logs and tests); updated under a lock, the decode pool is multi-threaded."""

    device: int = 0  # decoded and preprocessed on the device
    cpu: int = 0  # routed to the CPU path up front (other formats, CMYK)
    refused: int = 0  # the device decoder refused; the CPU path took them
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, device: int = 0, cpu: int = 0, refused: int = 0) -> None:
        with self.lock:
            self.device += device
            self.cpu += cpu
            self.refused += refused


class DeviceInput:
    """Decode + preprocess a request's images: JPEGs on ``device``, the rest on the CPU.

    Args:
        cfg: the bundle's preprocessing.
        device: the engine's device ("cpu", "cuda:0", ...).
        max_pixels: pixel limit per image (checked from the header).
        fast_decode: for the CPU fallback: reduced-scale decode of large JPEGs (as the CPU path).
        decoder: the device decoder (tests inject a refusing one).
        shape: aspect-ratio and resized-size limits (checked from the header, as on the CPU path).
    """

    def __init__(self, cfg: PreprocessConfig, device: str | torch.device, max_pixels: int,
                 fast_decode: bool = True, decoder: Decoder = decode_on_device,
                 shape: ShapeLimits | None = None) -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.max_pixels = max_pixels
        self.shape = shape
        self.fast_decode = fast_decode
        self._decoder = decoder
        self._pinned = self.device.type == "cuda"
        self.counters = _Counters()

    def _encoded(self, data: bytes) -> torch.Tensor:
        """The bytes as a uint8 CPU tensor (page-locked on CUDA, so nvJPEG's host->device copy can overlap)."""
        t = torch.empty(len(data), dtype=torch.uint8, pin_memory=self._pinned)  # (n,)
        t.numpy()[:] = np.frombuffer(data, dtype=np.uint8)
        return t

    def _cpu(self, data: bytes) -> np.ndarray:
        return decode_and_preprocess(data, self.cfg, self.max_pixels, self.fast_decode, self.shape)  # (3, S, S)

    def prepare(self, images: Sequence[bytes]) -> list[np.ndarray | torch.Tensor | BaseException]:
        """Decode and preprocess ``images``; blocking (runs in the decode pool).

        Device-decodable JPEGs go to the device decoder in one batched call; if it refuses the batch,
        each is tried alone, and one it still refuses takes the CPU path.

        Returns:
            Per image, in order: float32 (3, S, S) on the device (torch) or on the CPU (NumPy), or the
            ImageDecodeError / ImageTooLargeError for that image (the caller maps it to 400 / 413).
        """
        headers = [self._header(data) for data in images]
        chosen = [i for i, h in enumerate(headers) if isinstance(h, HeaderInfo) and h.device_decodable]
        decoded = dict(zip(chosen, self._decode_all([images[i] for i in chosen]), strict=True))
        out: list[np.ndarray | torch.Tensor | BaseException] = []
        for i, (data, header) in enumerate(zip(images, headers, strict=True)):
            pixels = decoded.get(i)
            if isinstance(header, BaseException):
                out.append(header)
            elif pixels is not None:
                out.append(preprocess_tensor(pixels, self.cfg))  # (3, S, S) on the device
                self.counters.add(device=1)
            else:
                out.append(self._cpu_or_error(data))  # (3, S, S) NumPy, or the image's error
                self.counters.add(cpu=int(i not in decoded))
        return out

    def _header(self, data: bytes) -> HeaderInfo | BaseException:
        try:
            return read_header(data, self.max_pixels, self.shape)
        except (ImageDecodeError, ImageTooLargeError) as exc:
            return exc

    def _cpu_or_error(self, data: bytes) -> np.ndarray | BaseException:
        try:
            return self._cpu(data)
        except (ImageDecodeError, ImageTooLargeError) as exc:
            return exc

    def _decode_all(self, images: list[bytes]) -> list[torch.Tensor | None]:
        """Device decode of every image; None where the decoder refused it (the CPU path decides)."""
        if not images:
            return []
        encoded = [self._encoded(d) for d in images]
        try:
            return list(self._decoder(encoded, self.device))
        except RuntimeError:
            if len(images) == 1:
                self._refused(images[0])
                return [None]
        return [self._decode_one(d, e) for d, e in zip(images, encoded, strict=True)]

    def _decode_one(self, data: bytes, encoded: torch.Tensor) -> torch.Tensor | None:
        try:
            return self._decoder([encoded], self.device)[0]
        except RuntimeError:
            self._refused(data)
            return None

    def _refused(self, data: bytes) -> None:
        self.counters.add(refused=1)
        logger.debug("device decoder refused a %d-byte JPEG; decoding it on the CPU", len(data))
        return None


def device_input_for(mode: DeviceDecodeMode, engine_name: str, engine_device: str, cfg: PreprocessConfig,
                     max_pixels: int, fast_decode: bool, shape: ShapeLimits | None = None) -> DeviceInput | None:
    """The device input path the settings ask for, or None (the CPU path).

    Args:
        mode: ``Settings.device_decode``: "auto" = on when the torch engine runs on CUDA, "on" = whenever
            the engine is torch (CPU included: tests), "off" = never.
        engine_name: the engine's registry name (only "torch" takes device tensors).
        engine_device: where the engine really runs (``Engine.device``, e.g. "cuda:0").
        cfg: the bundle's preprocessing.
        max_pixels: pixel limit per image.
        fast_decode: the CPU fallback's reduced-scale decode of large JPEGs.
        shape: aspect-ratio and resized-size limits per image.
    """
    if engine_name != "torch" or mode == "off" or (mode == "auto" and not engine_device.startswith("cuda")):
        return None
    return DeviceInput(cfg, engine_device, max_pixels, fast_decode, shape=shape)


def batch_stacker(device: str) -> Callable[[list[np.ndarray | torch.Tensor], int], torch.Tensor]:
    """The batcher's ``stack`` for the torch engine on ``device``: one batch there, pinned staging on CUDA."""
    target = torch.device(device)

    def stack(items: list[np.ndarray | torch.Tensor], rows: int) -> torch.Tensor:
        return stack_pixels(items, target, pad_to=rows, pinned=target.type == "cuda")  # (rows, 3, H, W)

    return stack

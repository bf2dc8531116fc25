"""Image features of the frozen vision tower, computed once and cached on disk.

The encoders are frozen during prompt tuning, so without augmentation an image's feature never
changes: an epoch then only needs the text side. :class:`FeatureCache` stores the L2-normalised
features of a folder index under a key that covers everything they depend on (architecture,
vision weights, preprocessing, the files with their sizes and modification times), so a cache
entry is never reused for different inputs.

Images are read with :func:`models.preprocess.decode_image` and :func:`models.preprocess.preprocess_image`
(through :class:`models.train.data.folders.ImageFolderDataset`), the same code the service runs.
:class:`AugmentedImages` is the training-time variant with seeded random crops and flips applied
to the decoded image before that same preprocessing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from models.preprocess import (
    ImageDecodeError,
    ImageTooLargeError,
    PreprocessConfig,
    decode_image,
    preprocess_image,
    to_rgb,
)
from models.train.data.folders import FolderIndex, ImageFolderDataset, collate_skip_bad

__all__ = [
    "EncodedSplit",
    "AugmentedImages",
    "autocast",
    "torch_threads",
    "encode_pixels",
    "encode_index",
    "weights_fingerprint",
    "FeatureCache",
]

logger = logging.getLogger(__name__)


@dataclass
class EncodedSplit:
    """Features of the readable images of a split."""

    features: torch.Tensor  # (N, D) float32, L2-normalised
    labels: torch.Tensor  # (N,) int64 (-1 for unlabelled sets)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run a block with ``n`` intra-op CPU threads (None or 0: leave torch's setting), then restore it.

    Small models on a shared CPU are much faster with one thread than with several contending ones.
    """
    if not n:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def autocast(device: torch.device, amp: bool) -> Any:
    """Mixed precision on CUDA when asked (float16), a no-op context otherwise."""
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return nullcontext()


def encode_pixels(visual: nn.Module, pixels: torch.Tensor, device: torch.device, amp: bool = False) -> torch.Tensor:
    """(B, 3, H, W) preprocessed pixels -> (B, D) L2-normalised float32 features (no gradient)."""
    with torch.no_grad(), autocast(device, amp):
        feats = visual(pixels.to(device, non_blocking=True))  # (B, D)
    return F.normalize(feats.float(), dim=-1)


class AugmentedImages(Dataset):
    """Training images with a seeded random resized crop and horizontal flip, then the eval preprocessing.

    The draw of image ``i`` in epoch ``e`` comes from ``default_rng([seed, e, i])``: the same in every
    run and independent of worker processes. Set :attr:`epoch` before each epoch.

    Args:
        index: the files.
        preprocess: the model's preprocessing (applied after the augmentation).
        seed: augmentation seed.
        scale: range of the crop's area as a fraction of the image (CoOp: random resized crop).
    """

    def __init__(
        self, index: FolderIndex, preprocess: PreprocessConfig, seed: int, scale: tuple[float, float] = (0.5, 1.0)
    ) -> None:
        self.index = index
        self.preprocess = preprocess
        self.seed = seed
        self.scale = scale
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.index)

    def _augment(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        width, height = img.size
        area = width * height * rng.uniform(*self.scale)
        ratio = float(np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3))))
        w = int(round(min(width, np.sqrt(area * ratio))))
        h = int(round(min(height, np.sqrt(area / ratio))))
        left = int(rng.integers(0, width - w + 1))
        top = int(rng.integers(0, height - h + 1))
        img = img.crop((left, top, left + w, top + h))
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else img

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | None:
        path = self.index.paths[i]
        try:
            img = to_rgb(decode_image(path.read_bytes()))  # the one RGB conversion, before augmentation
        except (OSError, ImageDecodeError, ImageTooLargeError) as exc:
            logger.warning("skipping unreadable image %s (%s)", path, exc)
            return None
        img = self._augment(img, np.random.default_rng([self.seed, self.epoch, i]))
        return torch.from_numpy(preprocess_image(img, self.preprocess)), self.index.labels[i]  # (3, H, W), label


def _batches(loader: DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for batch in loader:
        if batch is not None:  # a batch of only unreadable files
            yield batch


def encode_index(
    visual: nn.Module,
    index: FolderIndex,
    preprocess: PreprocessConfig,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 128,
    num_workers: int = 0,
    amp: bool = False,
    progress: bool = False,
    desc: str = "encode",
) -> EncodedSplit:
    """Features of every readable image of an index (unreadable files are skipped and logged).

    Args:
        visual: the frozen vision tower (eval mode, on ``device``).
        index: the images.
        preprocess: the model's preprocessing.
        device: where the tower runs.
        batch_size: images per forward pass.
        num_workers: DataLoader processes decoding images.
        amp: float16 autocast on CUDA.
        progress: show a tqdm bar.
        desc: label of the bar.

    Returns:
        Features and labels, in index order.
    """
    dev = torch.device(device)
    loader = DataLoader(ImageFolderDataset(index, preprocess), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=collate_skip_bad)
    feats: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    for pixels, ys in tqdm(_batches(loader), total=len(loader), desc=desc, disable=not progress, leave=False):
        feats.append(encode_pixels(visual, pixels, dev, amp).cpu())  # (b, D)
        labels.append(ys)
    if not feats:
        raise ValueError(f"{index.root}: no readable images")
    return EncodedSplit(torch.cat(feats), torch.cat(labels))  # (N, D), (N,)


def weights_fingerprint(module: nn.Module) -> str:
    """SHA-256 over a module's parameter and buffer names, shapes, dtypes and values."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)  # (numel,): view() needs at least one dim
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class FeatureCache:
    """On-disk cache of :class:`EncodedSplit` keyed by model, preprocessing and files.

    Args:
        root: cache directory (created on first write).
        visual: the vision tower whose features are cached (fingerprinted once).
        arch: a description of the architecture (part of the key).
        preprocess: the preprocessing (part of the key).
    """

    def __init__(self, root: str | Path, visual: nn.Module, arch: dict[str, Any], preprocess: PreprocessConfig) -> None:
        self.root = Path(root)
        self.visual = visual
        self._model_key = json.dumps(
            {"arch": arch, "weights": weights_fingerprint(visual), "preprocess": preprocess.model_dump(mode="json")},
            sort_keys=True,
        )
        self.preprocess = preprocess
        self.hits = 0
        self.misses = 0
        self._memory: dict[Path, torch.Tensor] = {}  # path -> (D,) feature of every image read so far

    def _remember(self, index: FolderIndex, split: EncodedSplit) -> None:
        if len(split.labels) == len(index):  # aligned only when every file was readable
            self._memory.update(zip(index.paths, split.features, strict=True))

    def _from_memory(self, index: FolderIndex) -> EncodedSplit | None:
        """Features of an index whose files were all seen before (subsets, relabelled splits), else None."""
        if not len(index) or any(p not in self._memory for p in index.paths):
            return None
        feats = torch.stack([self._memory[p] for p in index.paths])  # (N, D)
        return EncodedSplit(feats, torch.tensor(index.labels, dtype=torch.long))

    def key(self, index: FolderIndex) -> str:
        """Hex key of an index's features: model key plus every file's path, size and mtime."""
        h = hashlib.sha256(self._model_key.encode())
        for path, label in zip(index.paths, index.labels, strict=True):
            st = path.stat()
            h.update(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{label}\n".encode())
        return h.hexdigest()[:32]

    def get(self, index: FolderIndex, **encode_kwargs: Any) -> EncodedSplit:
        """Cached features of ``index``, encoding (and storing) them on a miss.

        Args:
            index: the images.
            **encode_kwargs: passed to :func:`encode_index` on a miss (device, batch_size, ...).

        Returns:
            The features.
        """
        from safetensors.torch import load_file, save_file

        remembered = self._from_memory(index)
        if remembered is not None:
            self.hits += 1
            return remembered
        path = self.root / f"features-{self.key(index)}.safetensors"
        if path.is_file():
            self.hits += 1
            data = load_file(str(path))
            split = EncodedSplit(data["features"], data["labels"])
            self._remember(index, split)
            return split
        self.misses += 1
        split = encode_index(self.visual, index, self.preprocess, **encode_kwargs)
        self._remember(index, split)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({"features": split.features.contiguous(), "labels": split.labels.contiguous()}, str(tmp))
        tmp.replace(path)
        logger.debug("cached %d features of %s in %s", len(split.labels), index.root, path)
        return split

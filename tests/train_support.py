"""Helpers shared by the training-side tests: image folders on disk (a proxy world: tests/proxy_support.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_png(path: Path, seed: int, size: int = 16) -> Path:
    """A small random RGB PNG at ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def make_image_folder(root: Path, classes: dict[str, int], seed: int = 0) -> Path:
    """``root/<class>/img_<i>.png`` with the given number of images per class."""
    for ci, (name, n) in enumerate(sorted(classes.items())):
        for i in range(n):
            write_png(root / name / f"img_{i:03d}.png", seed * 1000 + ci * 100 + i)
    return root


def drawing_data(root: Path, classes: list[str], per_class: int = 6, near: int = 10) -> Path:
    """Evaluation data in the standard layout, from synthetic drawings (seed 5, 48 px).

    ``id/{train,val,test}/<k>_<class>/`` (``per_class`` each; the folders sort in ``classes``' order),
    ``id/classnames.txt`` and ``ood/near/`` (``near`` images).
    """
    from models.train.export import parity_images

    images = iter(parity_images(len(classes) * per_class * 3 + near, seed=5, size=48))
    folders = [f"{k}_{name}" for k, name in enumerate(classes)]  # sorted folder order = the classes' order
    for split in ("train", "val", "test"):
        for folder in folders:
            (root / "id" / split / folder).mkdir(parents=True)
            for i in range(per_class):
                next(images).save(root / "id" / split / folder / f"{i}.png")
    (root / "id" / "classnames.txt").write_text("\n".join(classes) + "\n")
    (root / "ood" / "near").mkdir(parents=True)
    for i in range(near):
        next(images).save(root / "ood" / "near" / f"{i}.png")
    return root

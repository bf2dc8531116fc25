"""Helpers of the offline-pipeline tests: a small task in the real-data directory layout."""

from __future__ import annotations

from pathlib import Path

from tests.train_support import make_image_folder, write_png

TASK_CLASSES = ("circle", "square", "star", "triangle")  # the micro CLIP fixture's classes, sorted


def make_task_dirs(root: Path, per_class: int = 4) -> Path:
    """``root/id/{train,val,test}/<class>/``, two OOD sets (one nested, one flat) and a covariate set.

    Images are random PNGs: enough to exercise every code path, not to learn anything.
    """
    for seed, split in enumerate(("train", "val", "test")):
        make_image_folder(root / "id" / split, dict.fromkeys(TASK_CLASSES, per_class), seed=seed + 1)
    make_image_folder(root / "ood" / "near", {"ring": 3, "spiral": 3}, seed=7)
    for i in range(5):
        write_png(root / "ood" / "noise" / f"n_{i}.png", 900 + i)
    make_image_folder(root / "covariate" / "sketch", dict.fromkeys(TASK_CLASSES, 2), seed=9)
    (root / "id" / "classnames.txt").write_text("".join(f"{c}\n" for c in TASK_CLASSES), encoding="utf-8")
    return root

"""ID splits of a synthetic world: which categories are ID is chosen when the world is read.

A world (:mod:`.synth`) renders every category for every split, and its tiny CLIP is pretrained on
all of them. :func:`world_split` takes the world and an ID class list and returns every index an
experiment needs, so one frozen backbone (and one feature cache) serves many pre-registered ID
splits:

- ID train / val / test: the ID categories' ``objects/{train,val,test}`` images, labels in sorted
  folder order (the ImageFolder convention every loader here uses);
- near OOD val / test, **per category**: the other categories' ``objects/{val,test}`` images (the
  same files are ID val/test under a split where the category is ID); :attr:`WorldSplit.hard_near`
  names the near categories that are look-alikes of an ID class (:data:`.shapes.LOOKALIKES`);
- far OOD val / test per far set, and covariate-shift val / test per held-out style (the ID
  categories only, labels aligned to ID).

:func:`random_id_splits` draws pre-registered random ID splits from a seed; :func:`load_task_root`
reads either a world (any split) or a folder in the standard layout
(:class:`.folders.TaskPaths`) into the :class:`.folders.TaskData` the trainer and evaluation take.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

from models.train.data.folders import FolderIndex, TaskData, TaskPaths, load_task, scan_image_folder, scan_unlabelled
from proxy.world.shapes import folder_name, lookalikes_of
from proxy.world.synth import EVAL_SPLITS, WORLD_FILE, WorldManifest, load_world

__all__ = ["WorldSplit", "world_split", "random_id_splits", "load_task_root", "is_world"]

logger = logging.getLogger(__name__)

EvalSplit = Literal["val", "test"]


@dataclass(frozen=True)
class WorldSplit:
    """Every index of one ID split of a world (module docstring). OOD indexes have labels -1."""

    world: Path  # the world directory
    id_classes: tuple[str, ...]  # ID categories in label order (sorted by folder name)
    train: FolderIndex  # ID train
    val: FolderIndex  # ID val: selection, calibration, development
    test: FolderIndex  # ID test: the pre-registered evaluation only
    near_val: dict[str, FolderIndex]  # near-OOD category -> its val images
    near_test: dict[str, FolderIndex]  # near-OOD category -> its test images
    far_val: dict[str, FolderIndex]  # far-OOD set -> val images
    far_test: dict[str, FolderIndex]  # far-OOD set -> test images
    covariate_val: dict[str, FolderIndex]  # held-out style -> ID categories' val images, ID labels
    covariate_test: dict[str, FolderIndex]  # held-out style -> ID categories' test images, ID labels
    hard_near: tuple[str, ...]  # near categories that are look-alikes of an ID class

    @property
    def near_classes(self) -> tuple[str, ...]:
        """The near-OOD categories (every category that is not ID), in the world's order."""
        return tuple(self.near_val)

    def near(self, split: EvalSplit, categories: Sequence[str] | None = None) -> FolderIndex:
        """One index pooling the near-OOD images of some categories (default: all) of a split.

        Its root is the split's folder, so each image's sub-folder is its category (the evaluation's
        per-group rates read it).
        """
        sets = self.near_val if split == "val" else self.near_test
        chosen = [sets[c] for c in (categories if categories is not None else sets)]
        root = self.world / "objects" / split
        paths = tuple(p for idx in chosen for p in idx.paths)
        return FolderIndex(root, paths, tuple([-1] * len(paths)))

    def task(self, split: EvalSplit = "test") -> TaskData:
        """The split as the trainer's / evaluation's :class:`TaskData`.

        ``test`` holds ID images of ``split`` (ID val when ``split="val"``, for development that must
        not touch test images); OOD sets: ``near`` (every near category), ``near_hard`` (the
        look-alikes, when there are any) and each far set, all of ``split``; covariate sets of ``split``.
        ``train`` and ``val`` are always ID train and ID val.
        """
        ood = {"near": self.near(split)}
        if self.hard_near:
            ood["near_hard"] = self.near(split, self.hard_near)
        ood.update(self.far_val if split == "val" else self.far_test)
        return TaskData(
            train=self.train,
            val=self.val,
            test=self.test if split == "test" else self.val,
            ood=ood,
            covariate=self.covariate_val if split == "val" else self.covariate_test,
        )


def is_world(root: str | Path) -> bool:
    """Whether a directory holds a synthetic world (a ``world.json``)."""
    return (Path(root) / WORLD_FILE).is_file()


def _restrict(index: FolderIndex, folders: Sequence[str]) -> FolderIndex:
    """The index's images of some class folders, relabelled 0..len(folders)-1 in the given order."""
    label_of = {f: i for i, f in enumerate(folders)}
    keep = [i for i, y in enumerate(index.labels) if index.class_folders[y] in label_of]
    return FolderIndex(
        index.root,
        tuple(index.paths[i] for i in keep),
        tuple(label_of[index.class_folders[index.labels[i]]] for i in keep),
        tuple(folders),
        tuple(index.class_names[index.class_folders.index(f)] for f in folders),
        index.skipped,
    )


def _per_category(index: FolderIndex, categories: Sequence[str]) -> dict[str, FolderIndex]:
    out = {}
    for c in categories:
        label = index.class_folders.index(folder_name(c))
        keep = [i for i, y in enumerate(index.labels) if y == label]
        paths = tuple(index.paths[i] for i in keep)
        out[c] = FolderIndex(index.root / folder_name(c), paths, tuple([-1] * len(paths)))
    return out


def world_split(world: str | Path | WorldManifest, id_classes: Sequence[str] | None = None) -> WorldSplit:
    """Every index of one ID split of a world, without touching a file.

    Args:
        world: a world directory (``deltagate data synth``) or its manifest.
        id_classes: the ID categories (at least 2); default: the world's default split.

    Returns:
        The split's indexes (:class:`WorldSplit`).

    Raises:
        ValueError: an ID class is not a category of the world, or fewer than 2 ID classes.
        FileNotFoundError: not a world.
    """
    manifest = world if isinstance(world, WorldManifest) else load_world(world)
    cfg = manifest.config
    ids = tuple(id_classes) if id_classes is not None else cfg.id_classes
    cfg = replace(cfg, id_classes=ids)  # validates: known categories, >= 2 classes
    folders = sorted(folder_name(c) for c in ids)
    by_folder = {folder_name(c): c for c in cfg.categories}
    near = cfg.near_classes
    root = Path(manifest.root)
    objects = {s: scan_image_folder(root / "objects" / s) for s in ("train", "val", "test")}
    names = [by_folder[f] for f in folders]
    id_idx = {s: replace(_restrict(idx, folders), class_names=tuple(names)) for s, idx in objects.items()}
    far = {s: {name: scan_unlabelled(root / "far" / name / s) for name, _ in cfg.far_ood} for s in EVAL_SPLITS}
    cov = {
        s: {st: replace(_restrict(scan_image_folder(root / "covariate" / st / s), folders), class_names=tuple(names))
            for st in cfg.covariate_styles}
        for s in EVAL_SPLITS
    }
    split = WorldSplit(
        world=root,
        id_classes=tuple(names),
        train=id_idx["train"],
        val=id_idx["val"],
        test=id_idx["test"],
        near_val=_per_category(objects["val"], near),
        near_test=_per_category(objects["test"], near),
        far_val=far["val"],
        far_test=far["test"],
        covariate_val=cov["val"],
        covariate_test=cov["test"],
        hard_near=tuple(c for c in lookalikes_of(ids) if c in near),
    )
    logger.info("world split: ID %s, %d near categories (%d look-alikes)", list(split.id_classes), len(near),
                len(split.hard_near))
    return split


def random_id_splits(categories: Sequence[str], n_classes: int, n_splits: int, seed: int) -> list[tuple[str, ...]]:
    """Pre-registered random ID splits: ``n_splits`` distinct subsets of ``n_classes`` categories.

    Split ``j`` is drawn from ``numpy.random.default_rng([seed, j])`` (redrawn while it repeats an
    earlier one), so the list depends on (categories, n_classes, seed) only and a longer list
    extends a shorter one. Each split is in the categories' order.

    Raises:
        ValueError: fewer than 2 classes, more classes than categories, or more splits than exist.
    """
    cats = list(categories)
    if not 2 <= n_classes < len(cats):
        raise ValueError(f"n_classes must be in [2, {len(cats) - 1}] for {len(cats)} categories")
    from math import comb

    if n_splits > comb(len(cats), n_classes):
        raise ValueError(f"only {comb(len(cats), n_classes)} distinct splits of {n_classes} exist")
    out: list[tuple[str, ...]] = []
    for j in range(n_splits):
        rng = np.random.default_rng([seed, j])
        while True:
            chosen = set(rng.choice(len(cats), size=n_classes, replace=False).tolist())
            split = tuple(c for i, c in enumerate(cats) if i in chosen)
            if split not in out:
                break
        out.append(split)
    return out


def load_task_root(
    root: str | Path,
    class_names: str | Path | None = None,
    *,
    id_classes: Sequence[str] | None = None,
    split: EvalSplit = "test",
) -> TaskData:
    """The task data of a directory: a synthetic world (any ID split) or the standard layout.

    Args:
        root: a world (``world.json``) or a folder laid out as :meth:`TaskPaths.from_root` reads.
        class_names: a names file (standard layout only).
        id_classes: the ID split of a world (default: the world's own); refused for other folders.
        split: for a world, whether ``test`` and the OOD/covariate sets are the ``test`` or the
            ``val`` images (:meth:`WorldSplit.task`); other folders have one layout.

    Raises:
        ValueError: ``id_classes`` or ``split="val"`` given for a folder that is not a world.
    """
    if is_world(root):
        return world_split(root, id_classes).task(split)
    if id_classes is not None or split != "test":
        raise ValueError(f"{root} is not a synthetic world: its split is fixed by its folders")
    return load_task(TaskPaths.from_root(root, class_names))

"""Readers of image data in the layout users already have (the proxy's synthetic world writes it too).

- ID splits are ImageFolder directories, ``root/<class folder>/*.jpg``; labels follow the sorted
  folder names (torchvision's convention). Display names come from the folder names
  (``lightning_bolt`` -> ``lightning bolt``) or from a class-names file (:func:`read_class_names`).
- OOD sets are any number of named directories of unlabelled images, flat or nested.
- Covariate-shift sets are ImageFolder directories with (a subset of) the ID class folders in
  another style; their labels are aligned to the ID folders.

Files are never trusted: names with other extensions are skipped at scan time and images that
cannot be decoded are skipped at load time, both with a count in the log, so a bad file never
stops an epoch. Decoding and preprocessing go through :mod:`models.preprocess`, the same code the
service runs.
"""

from __future__ import annotations

import csv
import json
import logging
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from models.errors import DataError
from models.preprocess import (
    IMAGE_EXTENSIONS,
    ImageDecodeError,
    ImageTooLargeError,
    PreprocessConfig,
    decode_image,
    preprocess_image,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "FolderIndex",
    "LoadedImages",
    "TaskPaths",
    "TaskData",
    "read_image",
    "read_class_names",
    "scan_image_folder",
    "scan_unlabelled",
    "scan_named_dirs",
    "scan_covariate",
    "few_shot",
    "load_images",
    "ImageFolderDataset",
    "collate_skip_bad",
    "load_task",
    "read_captions",
]

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class FolderIndex:
    """The image files of one split or set, with labels (-1 when unlabelled)."""

    root: Path  # the scanned directory
    paths: tuple[Path, ...]  # image files, in label-then-name order
    labels: tuple[int, ...]  # class index per file (into class_folders), -1 for OOD sets
    class_folders: tuple[str, ...] = ()  # sorted class folder names (label order)
    class_names: tuple[str, ...] = ()  # display names per class (prompts use these)
    skipped: int = 0  # files ignored at scan time (extension not an image, hidden files)

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: Sequence[int]) -> FolderIndex:
        """The same index restricted to some files (in the given order)."""
        return replace(self, paths=tuple(self.paths[i] for i in indices), labels=tuple(self.labels[i] for i in indices))

    def per_class(self) -> dict[int, int]:
        """Number of files per label."""
        out: dict[int, int] = {}
        for y in self.labels:
            out[y] = out.get(y, 0) + 1
        return out


def read_image(path: Path) -> Image.Image | None:
    """Decode an image file with the service's decoder; None when it cannot be read (reason logged at DEBUG).

    The one "decode or skip" rule of the offline side: a file that is missing, truncated, not an
    image or too large is skipped by every reader, never fatal.
    """
    try:
        return decode_image(path.read_bytes())
    except (OSError, ImageDecodeError, ImageTooLargeError) as exc:
        logger.debug("unreadable image %s: %s", path, exc)
        return None


def _folder_display_name(folder: str) -> str:
    return folder.replace("_", " ")


def read_class_names(path: str | Path, folders: Sequence[str] | None = None) -> list[str]:
    """Read display names of classes, one per line.

    Two forms are accepted (blank lines and ``#`` comments are ignored):

    - ``<folder> <name words>``: when every line starts with a known folder name (CoOp's ImageNet
      ``classnames.txt``: ``n01440764 tench``); the names are returned in sorted folder order.
    - ``<name words>``: names in sorted folder order.

    Args:
        path: the names file.
        folders: the class folders the names are for (needed to check and align the names).

    Returns:
        One display name per folder, in sorted folder order.

    Raises:
        DataError: the number of names does not match the folders, or a folder has no name.
    """
    lines = [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if folders is None:
        return lines
    ordered = sorted(folders)
    first = [ln.split(maxsplit=1) for ln in lines]
    if ordered and all(len(p) == 2 and p[0] in set(ordered) for p in first):
        mapping = {p[0]: p[1].strip() for p in first}
        missing = [f for f in ordered if f not in mapping]
        if missing:
            raise DataError(f"{path}: no name for class folders {missing[:5]}")
        return [mapping[f] for f in ordered]
    if len(lines) != len(ordered):
        raise DataError(
            f"{path} has {len(lines)} names but there are {len(ordered)} class folders; give one name per folder "
            "in sorted folder order, or '<folder> <name>' lines"
        )
    return lines


def _image_files(root: Path, recursive: bool) -> tuple[list[Path], int]:
    """Image files under root (sorted) and how many other files were ignored."""
    found, skipped = [], 0
    for p in sorted(root.rglob("*") if recursive else root.iterdir()):
        if not p.is_file():
            continue
        if p.name.startswith(".") or p.suffix.lower() not in IMAGE_EXTENSIONS:
            skipped += 1
            continue
        found.append(p)
    return found, skipped


def _log_skipped(root: Path, skipped: int) -> None:
    if skipped:
        logger.warning("%s: skipped %d non-image file(s)", root, skipped)


def scan_image_folder(
    root: str | Path, class_names: str | Path | Sequence[str] | None = None, recursive: bool = True
) -> FolderIndex:
    """Index an ImageFolder directory (``root/<class>/...``).

    Args:
        root: the split's directory; each sub-directory is a class (sorted order = label order).
        class_names: display names: a names file (see :func:`read_class_names`), a list in sorted
            folder order, or None to derive them from the folder names.
        recursive: also take images in sub-folders of a class folder.

    Returns:
        The index.

    Raises:
        FileNotFoundError: root does not exist or has no class folders.
        DataError: a class folder holds no image; the names do not fit the folders.
    """
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"image folder not found: {base}")
    folders = sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not folders:
        raise FileNotFoundError(f"{base} has no class sub-folders (expected root/<class>/<image>)")
    if class_names is None:
        names = [_folder_display_name(f) for f in folders]
    elif isinstance(class_names, str | Path):
        names = read_class_names(class_names, folders)
    else:
        names = list(class_names)
        if len(names) != len(folders):
            raise DataError(f"{len(names)} class names given for {len(folders)} class folders in {base}")
    paths: list[Path] = []
    labels: list[int] = []
    skipped = sum(1 for p in base.iterdir() if p.is_file())  # loose files next to the class folders
    for label, folder in enumerate(folders):
        files, skip = _image_files(base / folder, recursive)
        if not files:
            raise DataError(
                f"{base / folder} has no images ({skip} other file(s); images end in "
                f"{', '.join(sorted(IMAGE_EXTENSIONS))}): add the class's images or remove the folder"
            )
        paths += files
        labels += [label] * len(files)
        skipped += skip
    _log_skipped(base, skipped)
    return FolderIndex(base, tuple(paths), tuple(labels), tuple(folders), tuple(names), skipped)


def scan_unlabelled(root: str | Path) -> FolderIndex:
    """Index every image under a directory, flat or nested (an OOD set); labels are -1.

    Raises:
        FileNotFoundError: root does not exist.
    """
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"image directory not found: {base}")
    files, skipped = _image_files(base, recursive=True)
    _log_skipped(base, skipped)
    return FolderIndex(base, tuple(files), tuple([-1] * len(files)), skipped=skipped)


def scan_named_dirs(root: str | Path) -> dict[str, Path]:
    """The sub-directories of a directory by name (e.g. ``DIR/ood/{near,far_noise}``); {} if absent."""
    base = Path(root)
    if not base.is_dir():
        return {}
    return {d.name: d for d in sorted(base.iterdir()) if d.is_dir() and not d.name.startswith(".")}


def scan_covariate(root: str | Path, id_index: FolderIndex) -> FolderIndex:
    """Index a covariate-shift set: ID class folders in another style, labels aligned to the ID task.

    Folders that are not ID classes are skipped with a warning; a set may hold a subset of the classes
    (as ImageNet-R holds 200 of ImageNet's 1000).

    Raises:
        FileNotFoundError: root does not exist.
        ValueError: none of its folders is an ID class.
    """
    cov = scan_image_folder(root, recursive=True)
    label_of = {f: i for i, f in enumerate(id_index.class_folders)}
    unknown = [f for f in cov.class_folders if f not in label_of]
    if unknown:
        logger.warning("%s: %d folder(s) are not ID classes and are skipped: %s", root, len(unknown), unknown[:5])
    if len(unknown) == len(cov.class_folders):
        raise ValueError(f"{root}: none of its folders is an ID class ({', '.join(id_index.class_folders[:5])}, ...)")
    keep = [i for i, y in enumerate(cov.labels) if cov.class_folders[y] in label_of]
    return FolderIndex(
        cov.root,
        tuple(cov.paths[i] for i in keep),
        tuple(label_of[cov.class_folders[cov.labels[i]]] for i in keep),
        id_index.class_folders,
        id_index.class_names,
        cov.skipped,
    )


def few_shot(index: FolderIndex, shots: int, seed: int, verify: bool = True) -> FolderIndex:
    """Sample ``shots`` images per class (CoOp protocol), reproducibly.

    Each class's files are shuffled by a generator seeded with ``(seed, crc32(folder))``, so a class's
    sample does not depend on the other classes; the first ``shots`` (readable, if ``verify``) are kept.
    A class with fewer images keeps all of them, with a warning.

    Args:
        index: a labelled split (usually ID train).
        shots: images per class; ``<= 0`` keeps everything.
        seed: the few-shot seed (CoOp runs seeds 1, 2, 3).
        verify: decode candidates and pass over unreadable ones (counted in the log).

    Returns:
        The sampled index, ordered by label.
    """
    if shots <= 0:
        return index
    chosen: list[int] = []
    bad: list[str] = []
    by_label: dict[int, list[int]] = {}
    for i, y in enumerate(index.labels):
        by_label.setdefault(y, []).append(i)
    for y in sorted(by_label):
        key = index.class_folders[y] if 0 <= y < len(index.class_folders) else str(y)
        order = np.random.default_rng([seed, zlib.crc32(key.encode("utf-8"))]).permutation(len(by_label[y]))
        taken = 0
        for j in order:
            if taken == shots:
                break
            i = by_label[y][int(j)]
            if verify and read_image(index.paths[i]) is None:
                bad.append(str(index.paths[i]))
                continue
            chosen.append(i)
            taken += 1
        if taken < shots:
            logger.warning("class %s has only %d usable image(s) for %d shots", key, taken, shots)
    if bad:
        logger.warning("few-shot sampling passed over %d unreadable image(s): %s", len(bad), _few(bad))
    return index.subset(sorted(chosen, key=lambda i: (index.labels[i], str(index.paths[i]))))


@dataclass
class LoadedImages:
    """Preprocessed images of an index, minus the unreadable ones."""

    pixels: torch.Tensor  # (N, 3, H, W) normalised (float32 or the requested dtype)
    labels: torch.Tensor  # (N,) int64, -1 for unlabelled
    paths: list[Path]  # the files that were read, aligned with pixels
    bad: list[Path] = field(default_factory=list)  # files that could not be decoded (skipped)


def load_images(
    index: FolderIndex | Iterable[Path],
    preprocess: PreprocessConfig,
    dtype: torch.dtype = torch.float32,
    labels: Sequence[int] | None = None,
) -> LoadedImages:
    """Decode and preprocess images into one tensor, skipping (and counting) unreadable files.

    Args:
        index: a folder index, or plain paths.
        preprocess: the model's preprocessing (the same function the service uses).
        dtype: storage dtype of the pixels (float16 halves the memory of a large corpus).
        labels: labels for plain paths (default -1).

    Returns:
        The images that could be read, their labels and paths, and the list of bad files.
    """
    if isinstance(index, FolderIndex):
        paths, ys = list(index.paths), list(index.labels)
    else:
        paths = [Path(p) for p in index]
        ys = list(labels) if labels is not None else [-1] * len(paths)
    size = preprocess.image_size
    out = torch.empty((len(paths), 3, size, size), dtype=dtype)  # (N, 3, H, W), trimmed below
    kept: list[int] = []
    bad: list[Path] = []
    for i, p in enumerate(paths):
        img = read_image(p)
        if img is None:
            bad.append(p)
            continue
        out[len(kept)] = torch.from_numpy(preprocess_image(img, preprocess))  # (3, H, W)
        kept.append(i)
    if bad:
        logger.warning("skipped %d unreadable image(s) of %d: %s", len(bad), len(paths), _few([str(b) for b in bad]))
    return LoadedImages(
        pixels=out[: len(kept)],
        labels=torch.tensor([ys[i] for i in kept], dtype=torch.long),
        paths=[paths[i] for i in kept],
        bad=bad,
    )


class ImageFolderDataset(Dataset):
    """Lazy dataset over a :class:`FolderIndex`; an unreadable file yields ``None`` (see :func:`collate_skip_bad`).

    Args:
        index: the files.
        preprocess: the model's preprocessing.
    """

    def __init__(self, index: FolderIndex, preprocess: PreprocessConfig) -> None:
        self.index = index
        self.preprocess = preprocess
        self.bad: set[Path] = set()  # unreadable files met so far (in this process)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | None:
        path = self.index.paths[i]
        img = read_image(path)
        if img is None:
            if path not in self.bad:
                logger.warning("skipping unreadable image %s; %d so far", path, len(self.bad) + 1)
            self.bad.add(path)
            return None
        return torch.from_numpy(preprocess_image(img, self.preprocess)), self.index.labels[i]  # (3, H, W), label


def collate_skip_bad(batch: list[tuple[torch.Tensor, int] | None]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """DataLoader collate that drops unreadable samples; None when the whole batch was unreadable."""
    good = [b for b in batch if b is not None]
    if not good:
        return None
    pixels = torch.stack([b[0] for b in good])  # (B', 3, H, W)
    return pixels, torch.tensor([b[1] for b in good], dtype=torch.long)


@dataclass(frozen=True)
class TaskPaths:
    """Where the data of a task lives; :meth:`from_root` reads the standard layout."""

    train: Path  # ImageFolder of ID training images
    val: Path | None = None  # ImageFolder of ID validation images
    test: Path | None = None  # ImageFolder of ID test images
    ood: tuple[tuple[str, Path], ...] = ()  # named OOD directories (flat or nested)
    covariate: tuple[tuple[str, Path], ...] = ()  # named covariate-shift ImageFolders
    class_names: Path | None = None  # optional names file (see read_class_names)

    @classmethod
    def from_root(cls, root: str | Path, class_names: str | Path | None = None) -> TaskPaths:
        """The standard layout: ``root/id/{train,val,test}``, ``root/ood/<name>``, ``root/covariate/<name>``.

        ``root/id/classnames.txt`` is used for names when present and no other file is given.

        Raises:
            FileNotFoundError: no ``root/id/train``.
        """
        base = Path(root)
        if not (base / "id" / "train").is_dir():
            raise FileNotFoundError(f"{base / 'id' / 'train'} not found (expected the layout root/id/train/<class>/)")
        names = Path(class_names) if class_names else base / "id" / "classnames.txt"

        def opt(p: Path) -> Path | None:
            return p if p.is_dir() else None

        return cls(
            train=base / "id" / "train",
            val=opt(base / "id" / "val"),
            test=opt(base / "id" / "test"),
            ood=tuple(scan_named_dirs(base / "ood").items()),
            covariate=tuple(scan_named_dirs(base / "covariate").items()),
            class_names=names if names.is_file() else None,
        )


@dataclass(frozen=True)
class TaskData:
    """Indexes of every split and set of a task (files are read later, by :func:`load_images`)."""

    train: FolderIndex
    val: FolderIndex | None
    test: FolderIndex | None
    ood: dict[str, FolderIndex]
    covariate: dict[str, FolderIndex]

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.train.class_names

    def summary(self) -> dict[str, Any]:
        """Counts per split and set (for logs and reports)."""
        out: dict[str, Any] = {"classes": list(self.class_names), "train": len(self.train)}
        out["val"] = len(self.val) if self.val else 0
        out["test"] = len(self.test) if self.test else 0
        out.update({f"ood/{k}": len(v) for k, v in self.ood.items()})
        out.update({f"covariate/{k}": len(v) for k, v in self.covariate.items()})
        return out


def _aligned(index: FolderIndex, train: FolderIndex, what: str) -> FolderIndex:
    if index.class_folders != train.class_folders:
        extra = sorted(set(index.class_folders) - set(train.class_folders))
        lacking = sorted(set(train.class_folders) - set(index.class_folders))
        differences = [f"{what} has {_few(extra)} that train lacks" if extra else "",
                       f"{what} lacks {_few(lacking)}" if lacking else ""]
        raise DataError(f"{index.root}: class folders differ from {train.root}'s: "
                        f"{' and '.join(d for d in differences if d)}; {what} and train need the same class folders")
    return replace(index, class_names=train.class_names)


def _few(names: Sequence[str], shown: int = 5) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def load_task(paths: TaskPaths) -> TaskData:
    """Scan every directory of a task.

    Raises:
        FileNotFoundError: a directory is missing.
        DataError: val/test class folders differ from train's; a class folder has no image; class-name count
            mismatch.
    """
    train = scan_image_folder(paths.train, paths.class_names)
    val = _aligned(scan_image_folder(paths.val), train, "val") if paths.val else None
    test = _aligned(scan_image_folder(paths.test), train, "test") if paths.test else None
    task = TaskData(
        train=train,
        val=val,
        test=test,
        ood={name: scan_unlabelled(p) for name, p in paths.ood},
        covariate={name: scan_covariate(p, train) for name, p in paths.covariate},
    )
    logger.info("task data: %s", task.summary())
    return task


def read_captions(
    path: str | Path, image_key: str = "image", caption_key: str = "caption"
) -> tuple[list[Path], list[str]]:
    """Read an image-caption list: JSON lines, or CSV/TSV with a header (open_clip's ``filepath,title``).

    Image paths are relative to the file's folder unless absolute. A directory argument means its
    ``captions.jsonl``. Rows without an image or a caption are skipped with a count in the log.

    Args:
        path: ``captions.jsonl``, ``*.csv`` or ``*.tsv`` (or the folder holding ``captions.jsonl``).
        image_key: the image field (CSV files also accept ``filepath``).
        caption_key: the caption field (CSV files also accept ``title``).

    Returns:
        Image paths and captions, aligned.

    Raises:
        FileNotFoundError: the file does not exist.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "captions.jsonl"
    if not p.is_file():
        raise FileNotFoundError(f"caption file not found: {p}")
    with p.open(encoding="utf-8", newline="") as fh:
        if p.suffix.lower() in (".csv", ".tsv"):
            rows: list[dict[str, Any]] = list(csv.DictReader(fh, delimiter="\t" if p.suffix.lower() == ".tsv" else ","))
        else:
            rows = [json.loads(line) for line in fh if line.strip()]
    paths: list[Path] = []
    captions: list[str] = []
    for row in rows:
        image = row.get(image_key) or row.get("filepath")
        caption = row.get(caption_key) or row.get("title")
        if not image or not caption:
            continue
        paths.append(Path(image) if Path(image).is_absolute() else p.parent / image)
        captions.append(str(caption))
    if len(paths) < len(rows):
        logger.warning("%s: skipped %d row(s) without an image or a caption", p, len(rows) - len(paths))
    return paths, captions

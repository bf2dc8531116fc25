"""The synthetic image-caption world: configuration, generation and its on-disk manifest.

The world has the structure of the paper's setting (CLIP pretraining, then an ID task, covariate and
semantic shift) and is written in exactly the layout real data uses, so one loader
(:mod:`.folders`) reads both::

    DIR/world.json                          the WorldConfig, class lists, counts, seed streams
    DIR/pretrain/images/000000.png ...      pretraining corpus: every category, pretraining styles,
    DIR/pretrain/captions.jsonl             plus texture/noise images, one caption each
    DIR/id/{train,val,test}/<class>/*.png   the ID task (ImageFolder), ID styles
    DIR/id/classnames.txt                   display names, one per line, in sorted folder order
    DIR/ood/near/<class>/*.png              near OOD: the other categories, ID styles
    DIR/ood/<far set>/*.png                 far OOD: textures / noise with no object (flat)
    DIR/covariate/<style>/<class>/*.png     covariate shift: ID classes in held-out styles

Determinism: image ``i`` of a stream is drawn from ``numpy.random.default_rng([seed, stream, key, i])``
where ``stream`` numbers the split (:data:`STREAMS`) and ``key`` is the CRC32 of the class, style or
far-set name. An image therefore depends on nothing but (seed, split, name, index): generation order
and the number of worker processes do not matter, and changing the ID subset leaves every other
class's images unchanged.

Far OOD versus pretraining: pretraining textures come from the ``pretrain`` stream. A far-OOD set
whose kinds are also pretraining kinds (``far_noise`` by default: ``noise``) is drawn from the ``far``
stream, so its images are new draws of a kind CLIP has seen; a set of kinds outside
``pretrain_textures`` (``far_textures`` by default: ``waves``, ``plaid``, ``blobs``) is a kind CLIP has
never seen. ``world.json`` records which is which.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from models.train.data.render import (
    STYLES,
    TEXTURES,
    object_caption,
    render_objects,
    render_texture,
    sample_object,
)
from models.train.data.shapes import CATEGORIES, folder_name

__all__ = [
    "WORLD_FILE",
    "CAPTIONS_FILE",
    "STREAMS",
    "WorldConfig",
    "WorldManifest",
    "PRESETS",
    "generate_world",
    "load_world",
    "with_overrides",
]

logger = logging.getLogger(__name__)

WORLD_FILE = "world.json"
CAPTIONS_FILE = "captions.jsonl"
FORMAT_VERSION = 1  # bump when the layout or the drawing of an image for a given seed changes
# Seed stream of each split (second entry of every image's seed sequence).
STREAMS: dict[str, int] = {"pretrain": 1, "train": 2, "val": 3, "test": 4, "near": 5, "far": 6, "covariate": 7}


@dataclass(frozen=True)
class WorldConfig:
    """Everything that defines a synthetic world; saved in ``world.json``."""

    seed: int = 0  # master seed: every image's generator is derived from it (module docstring)
    image_size: int = 64  # side of the PNGs; the tiny CLIP's input size
    supersample: int = 2  # images are drawn at image_size * supersample and box-filtered down (anti-aliasing)
    categories: tuple[str, ...] = CATEGORIES  # every object category of the world (22 everyday shapes)
    # The ID task's classes (a subset of categories); the other categories are near OOD.
    id_classes: tuple[str, ...] = ("circle", "square", "triangle", "star", "arrow", "heart", "cross", "crescent")
    pretrain_styles: tuple[str, ...] = ("flat", "outline", "shaded")  # styles CLIP is pretrained on
    id_styles: tuple[str, ...] = ("flat", "outline", "shaded")  # styles of ID train/val/test and near OOD
    covariate_styles: tuple[str, ...] = ("sketch", "pixel", "neon")  # held out of pretraining and the ID task
    # Texture kinds (no object) in the pretraining corpus, each with its own captions.
    pretrain_textures: tuple[str, ...] = ("noise", "stripes", "checker", "dots", "scribble", "gradient")
    # Far-OOD test sets: (name, texture kinds); kinds outside pretrain_textures are unseen by CLIP.
    far_ood: tuple[tuple[str, tuple[str, ...]], ...] = (
        ("far_noise", ("noise",)),
        ("far_textures", ("waves", "plaid", "blobs")),
    )
    n_pretrain: int = 36000  # images in the pretraining corpus (objects and textures)
    pretrain_texture_frac: float = 0.12  # share of pretraining images that are textures
    two_object_frac: float = 0.1  # share of pretraining object images with two objects
    n_train_per_class: int = 100  # ID train images per class (few-shot runs sample from these)
    n_val_per_class: int = 50  # ID validation images per class (model selection, calibration)
    n_test_per_class: int = 100  # ID test images per class
    n_near_per_class: int = 40  # near-OOD images per non-ID category
    n_far_per_set: int = 500  # images per far-OOD set
    n_covariate_per_class: int = 50  # images per ID class and held-out style

    def __post_init__(self) -> None:
        # JSON round-trips give lists; keep the frozen config hashable and comparable.
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
        object.__setattr__(self, "far_ood", tuple((str(n), tuple(k)) for n, k in self.far_ood))
        self.validate()

    @property
    def near_classes(self) -> tuple[str, ...]:
        """The categories that are not ID (near OOD), in category order."""
        return tuple(c for c in self.categories if c not in self.id_classes)

    def validate(self) -> None:
        """Check names and the split.

        Raises:
            ValueError: unknown category / style / texture, ID classes outside the categories, or a
                held-out style that is also a pretraining or ID style.
        """
        def unknown(names: tuple[str, ...], valid: tuple[str, ...] | list[str], what: str) -> None:
            bad = [n for n in names if n not in valid]
            if bad:
                raise ValueError(f"unknown {what}: {', '.join(bad)}; valid: {', '.join(valid)}")

        unknown(self.categories, CATEGORIES, "categories")
        unknown(self.id_classes, self.categories, "ID classes (must be among the categories)")
        unknown(self.pretrain_styles + self.id_styles + self.covariate_styles, list(STYLES), "styles")
        far_kinds = tuple(k for _, kinds in self.far_ood for k in kinds)
        unknown(self.pretrain_textures + far_kinds, list(TEXTURES), "texture kinds")
        if len(set(self.id_classes)) < 2:
            raise ValueError("the ID task needs at least 2 classes")
        leaked = set(self.covariate_styles) & (set(self.pretrain_styles) | set(self.id_styles))
        if leaked:
            raise ValueError(f"held-out (covariate) styles must not be pretraining or ID styles: {sorted(leaked)}")
        if not self.pretrain_styles or not self.id_styles:
            raise ValueError("pretrain_styles and id_styles must not be empty")
        if not set(self.id_styles) <= set(self.pretrain_styles):
            logger.warning("ID styles %s are not all pretraining styles", self.id_styles)
        if not 0.0 <= self.pretrain_texture_frac < 1.0 or not 0.0 <= self.two_object_frac <= 1.0:
            raise ValueError("pretrain_texture_frac must be in [0, 1) and two_object_frac in [0, 1]")
        if self.pretrain_texture_frac > 0 and not self.pretrain_textures:
            raise ValueError("pretrain_texture_frac > 0 needs at least one pretrain texture kind")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WorldConfig:
        """Inverse of :func:`dataclasses.asdict` (as stored in ``world.json``); unknown keys raise."""
        known = {f.name for f in fields(cls)}
        extra = set(data) - known
        if extra:
            raise ValueError(f"unknown world config keys: {sorted(extra)}; known: {sorted(known)}")
        return cls(**data)


# Named configurations: "default" for real runs, "small" for tests (generates in a few seconds).
PRESETS: dict[str, WorldConfig] = {
    "default": WorldConfig(),
    "small": WorldConfig(
        n_pretrain=400,
        n_train_per_class=8,
        n_val_per_class=4,
        n_test_per_class=6,
        n_near_per_class=2,
        n_far_per_set=8,
        n_covariate_per_class=3,
    ),
}


@dataclass
class WorldManifest:
    """What :func:`generate_world` wrote (also the content of ``world.json``)."""

    root: Path  # the world directory
    config: WorldConfig  # the configuration it was generated from
    counts: dict[str, int] = field(default_factory=dict)  # images per split / set, e.g. "id/train", "ood/near"
    seconds: float = 0.0  # generation wall time (not saved)

    @property
    def id_folders(self) -> list[str]:
        """ID class folder names in sorted order (the label order of the ImageFolder loader)."""
        return sorted(folder_name(c) for c in self.config.id_classes)

    def to_json(self) -> dict[str, Any]:
        """The ``world.json`` document."""
        cfg = self.config
        pre = set(cfg.pretrain_textures)
        return {
            "format_version": FORMAT_VERSION,
            "config": asdict(cfg),
            "id_classes": {folder_name(c): c for c in sorted(cfg.id_classes, key=folder_name)},
            "near_classes": list(cfg.near_classes),
            "far_ood": {
                name: {
                    "textures": list(kinds),
                    "unseen_kinds": [k for k in kinds if k not in pre],
                    "note": "kinds also in pretraining are new draws (seed stream 'far'); others are unseen kinds",
                }
                for name, kinds in cfg.far_ood
            },
            "seed_streams": STREAMS,
            "seed_rule": "image i of a split is drawn from numpy.random.default_rng([seed, stream, crc32(name), i])",
            "counts": self.counts,
        }


# ---------------------------------------------------------------------------------------------
# Jobs: one image each, rendered independently (so any number of workers gives the same files)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    stream: str  # key of STREAMS
    key: str  # class / style / far-set name ("" for pretraining)
    index: int  # image index within (stream, key)
    rel_path: str  # output path relative to the world root
    category: str = ""  # object category ("" for textures and pretraining)
    styles: tuple[str, ...] = ()  # styles to choose from
    textures: tuple[str, ...] = ()  # texture kinds to choose from (far OOD)


def _crc(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


def _rng(cfg: WorldConfig, job: _Job) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, STREAMS[job.stream], _crc(job.key), job.index])


def _render_pretrain(cfg: WorldConfig, rng: np.random.Generator) -> tuple[Any, dict[str, Any]]:
    if rng.random() < cfg.pretrain_texture_frac:
        kind = str(rng.choice(list(cfg.pretrain_textures)))
        img, caption = render_texture(rng, kind, cfg.image_size, cfg.supersample)
        return img, {"caption": caption, "kind": "texture", "texture": kind, "categories": []}
    style = str(rng.choice(list(cfg.pretrain_styles)))
    if rng.random() < cfg.two_object_frac:
        cats = [str(c) for c in rng.choice(list(cfg.categories), size=2)]
        slots = [(-1, 0), (1, 0)] if rng.random() < 0.5 else [(0, -1), (0, 1)]
        specs = [sample_object(rng, c, slot=s, max_size="medium") for c, s in zip(cats, slots, strict=True)]
    else:
        specs = [sample_object(rng, str(rng.choice(list(cfg.categories))))]
    img, bg = render_objects(rng, specs, style, cfg.image_size, cfg.supersample)
    caption = object_caption(rng, specs, style, bg)
    return img, {"caption": caption, "kind": "object", "style": style, "categories": [s.category for s in specs]}


def _run_job(args: tuple[WorldConfig, Path, _Job]) -> dict[str, Any]:
    cfg, root, job = args
    rng = _rng(cfg, job)
    record: dict[str, Any] = {}
    if job.stream == "pretrain":
        img, record = _render_pretrain(cfg, rng)
    elif job.textures:
        img, _ = render_texture(rng, str(rng.choice(list(job.textures))), cfg.image_size, cfg.supersample)
    else:
        style = str(rng.choice(list(job.styles)))
        img, _ = render_objects(rng, [sample_object(rng, job.category)], style, cfg.image_size, cfg.supersample)
    path = root / job.rel_path
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format="PNG")
    return record


def _jobs(cfg: WorldConfig) -> Iterator[_Job]:
    for i in range(cfg.n_pretrain):
        yield _Job("pretrain", "", i, f"pretrain/images/{i:06d}.png")
    per_split = {"train": cfg.n_train_per_class, "val": cfg.n_val_per_class, "test": cfg.n_test_per_class}
    for split, n in per_split.items():
        for c in cfg.id_classes:
            for i in range(n):
                yield _Job(split, c, i, f"id/{split}/{folder_name(c)}/{split}_{i:05d}.png", c, cfg.id_styles)
    for c in cfg.near_classes:
        for i in range(cfg.n_near_per_class):
            yield _Job("near", c, i, f"ood/near/{folder_name(c)}/near_{i:05d}.png", c, cfg.id_styles)
    for name, kinds in cfg.far_ood:
        for i in range(cfg.n_far_per_set):
            yield _Job("far", name, i, f"ood/{name}/{name}_{i:05d}.png", textures=kinds)
    for style in cfg.covariate_styles:
        for c in cfg.id_classes:
            for i in range(cfg.n_covariate_per_class):
                rel = f"covariate/{style}/{folder_name(c)}/{style}_{i:05d}.png"
                yield _Job("covariate", f"{style}/{c}", i, rel, c, (style,))


def _count(jobs: list[_Job]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for job in jobs:
        parts = job.rel_path.split("/")
        key = "/".join(parts[:2])  # "pretrain/images", "id/train", "ood/near", "covariate/sketch"
        key = "pretrain" if key == "pretrain/images" else key
        counts[key] = counts.get(key, 0) + 1
    return counts


def generate_world(
    cfg: WorldConfig, out_dir: str | Path, *, workers: int = 1, overwrite: bool = False
) -> WorldManifest:
    """Render a world to disk (layout in the module docstring).

    Args:
        cfg: the world's configuration.
        out_dir: target directory; must be empty or absent unless ``overwrite``.
        workers: processes rendering in parallel (the files do not depend on it).
        overwrite: replace an existing world in ``out_dir`` (only its known sub-folders are removed).

    Returns:
        The manifest, also written to ``out_dir/world.json``.

    Raises:
        FileExistsError: ``out_dir`` is not empty and ``overwrite`` is false.
    """
    root = Path(out_dir)
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{root} is not empty; pass overwrite=True (--overwrite) to replace the world")
        for sub in ("pretrain", "id", "ood", "covariate", WORLD_FILE):
            target = root / sub
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    jobs = list(_jobs(cfg))
    logger.info("rendering %d images into %s with %d worker(s)", len(jobs), root, workers)
    args = [(cfg, root, job) for job in jobs]
    if workers > 1:
        with get_context("spawn").Pool(workers) as pool:
            records = pool.map(_run_job, args, chunksize=256)
    else:
        records = [_run_job(a) for a in args]
    captions = root / "pretrain" / CAPTIONS_FILE
    captions.parent.mkdir(parents=True, exist_ok=True)
    with captions.open("w", encoding="utf-8") as fh:
        for job, rec in zip(jobs, records, strict=True):
            if job.stream == "pretrain":
                fh.write(json.dumps({"image": job.rel_path.removeprefix("pretrain/"), **rec}) + "\n")
    names = sorted(cfg.id_classes, key=folder_name)
    (root / "id").mkdir(parents=True, exist_ok=True)
    (root / "id" / "classnames.txt").write_text("".join(f"{n}\n" for n in names), encoding="utf-8")
    manifest = WorldManifest(root=root, config=cfg, counts=_count(jobs), seconds=time.perf_counter() - start)
    (root / WORLD_FILE).write_text(json.dumps(manifest.to_json(), indent=2) + "\n", encoding="utf-8")
    logger.info("world written in %.1f s: %s", manifest.seconds, manifest.counts)
    return manifest


def load_world(world_dir: str | Path) -> WorldManifest:
    """Read ``world.json`` of a generated world.

    Raises:
        FileNotFoundError: no ``world.json`` in the directory.
    """
    root = Path(world_dir)
    path = root / WORLD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a synthetic world (generate one with `deltagate data synth`)")
    doc = json.loads(path.read_text(encoding="utf-8"))
    return WorldManifest(root=root, config=WorldConfig.from_dict(doc["config"]), counts=doc.get("counts", {}))


def with_overrides(cfg: WorldConfig, **changes: Any) -> WorldConfig:
    """A copy of ``cfg`` with some fields changed (validated); None values are ignored."""
    return replace(cfg, **{k: v for k, v in changes.items() if v is not None})

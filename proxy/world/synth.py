"""The synthetic image-caption world: configuration, generation and its on-disk manifest.

The world has the structure of the paper's setting (CLIP pretraining on every category, then an ID
task, covariate and semantic shift). Every object category is rendered for every split, so *which*
categories are ID is decided when the world is read, not when it is drawn
(:func:`proxy.world.splits.world_split`): one world and one pretrained CLIP serve any number
of ID splits, and a category's images are the same whether it is ID (its ``val``/``test`` images are
ID val/test) or near OOD (the same images are near-OOD val/test)::

    DIR/world.json                                 the WorldConfig, class lists, counts, seed streams
    DIR/pretrain/images/000000.png ...             pretraining corpus: every category, pretraining styles,
    DIR/pretrain/captions.jsonl                    plus texture/noise images, one caption each
    DIR/objects/{train,val,test}/<category>/*.png  every category in the ID styles
    DIR/far/<far set>/{val,test}/*.png             far OOD: textures / noise with no object
    DIR/covariate/<style>/{val,test}/<category>/*.png  every category in held-out styles

``val`` splits are for development and model selection, ``test`` splits for the pre-registered
evaluation only. ``id_classes`` in the config is the world's *default* ID split; changing it
changes no file (:meth:`WorldConfig.same_images`).

Determinism: image ``i`` of a stream is drawn from ``numpy.random.default_rng([seed, stream, key, i])``
where ``stream`` numbers the split (:data:`STREAMS`) and ``key`` is the CRC32 of the category, style
or far-set name. An image therefore depends on nothing but (seed, split, name, index): generation
order and the number of worker processes do not matter.

Far OOD versus pretraining: pretraining textures come from the ``pretrain`` stream. A far-OOD set
whose kinds are also pretraining kinds (``far_noise`` by default: ``noise``) is drawn from the ``far``
streams, so its images are new draws of a kind CLIP has seen; a set of kinds outside
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

from proxy.world.render import (
    STYLES,
    TEXTURES,
    object_caption,
    render_objects,
    render_texture,
    sample_object,
)
from proxy.world.shapes import CATEGORIES, folder_name

__all__ = [
    "WORLD_FILE",
    "CAPTIONS_FILE",
    "STREAMS",
    "WorldConfig",
    "WorldManifest",
    "PRESETS",
    "SPLITS",
    "EVAL_SPLITS",
    "generate_world",
    "ensure_world",
    "write_captions",
    "load_world",
    "with_overrides",
]

logger = logging.getLogger(__name__)

WORLD_FILE = "world.json"
CAPTIONS_FILE = "captions.jsonl"
FORMAT_VERSION = 2  # bump when the layout or the drawing of an image for a given seed changes
# Seed stream of each split (second entry of every image's seed sequence). 5 was the near-OOD stream
# of format 1 (near OOD are now the other categories' val/test images).
STREAMS: dict[str, int] = {
    "pretrain": 1, "train": 2, "val": 3, "test": 4, "far": 6, "covariate": 7, "covariate_val": 8, "far_val": 9,
}
SPLITS: tuple[str, ...] = ("train", "val", "test")  # object splits of every category
EVAL_SPLITS: tuple[str, ...] = ("val", "test")  # splits of the far-OOD and covariate sets


# Config fields that change no image: the default ID split, and the captions (drawn after the image).
_CAPTION_FIELDS: tuple[str, ...] = ("caption_class_frac", "caption_style_leads")
_NOT_IN_IMAGES: tuple[str, ...] = ("id_classes", *_CAPTION_FIELDS)


@dataclass(frozen=True)
class WorldConfig:
    """Everything that defines a synthetic world; saved in ``world.json``."""

    seed: int = 0  # master seed: every image's generator is derived from it (module docstring)
    image_size: int = 64  # side of the PNGs; the tiny CLIP's input size
    supersample: int = 2  # images are drawn at image_size * supersample and box-filtered down (anti-aliasing)
    categories: tuple[str, ...] = CATEGORIES  # every object category of the world (22 everyday shapes)
    # The default ID split (a subset of categories; the others are near OOD). It changes no file:
    # any split can be read from the same world (proxy.world.splits.world_split).
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
    # Share of pretraining object captions that only name the objects ("a photo of a star"). At the
    # old 0.35 the tiny CLIP learned colours and positions and reached 64% zero-shot; at 0.7, 97%
    # (docs/proxy.md, "Pretraining recipe").
    caption_class_frac: float = 0.7
    # Class-only captions lead with their style (render.STYLE_LEADS: "a photo of" flat, "a line drawing
    # of" outline, "a 3d rendering of" shaded): a nuisance that moves every cosine with the style, as
    # photographic content does in real CLIP. With it, 2000 steps: 99.0% zero-shot ID val accuracy and
    # near-OOD look-alike AUROC of energy 91.1 (without: 99.8% and 98.6; runs/pre-B vs runs/pre-A2).
    caption_style_leads: bool = True
    n_train_per_class: int = 80  # train images per category (few-shot runs sample from these)
    n_val_per_class: int = 64  # val images per category: ID val (selection, calibration) or near-OOD val
    n_test_per_class: int = 128  # test images per category: ID test or near-OOD test (per-category CIs)
    n_far_val_per_set: int = 200  # validation images per far-OOD set
    n_far_per_set: int = 500  # test images per far-OOD set
    n_covariate_val_per_class: int = 16  # validation images per category and held-out style
    n_covariate_per_class: int = 48  # test images per category and held-out style

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
        if not 0.0 <= self.caption_class_frac <= 1.0:
            raise ValueError("caption_class_frac must be in [0, 1]")

    def same_images(self, other: WorldConfig) -> bool:
        """Whether two configs draw the same image files (they may differ in the default ID split and captions)."""
        return replace(self, **{k: getattr(other, k) for k in _NOT_IN_IMAGES}) == other

    def same_captions(self, other: WorldConfig) -> bool:
        """Whether two configs caption the pretraining images alike (given the same images)."""
        return all(getattr(self, k) == getattr(other, k) for k in _CAPTION_FIELDS)

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
        n_far_val_per_set=4,
        n_far_per_set=8,
        n_covariate_val_per_class=2,
        n_covariate_per_class=3,
    ),
}


@dataclass
class WorldManifest:
    """What :func:`generate_world` wrote (also the content of ``world.json``)."""

    root: Path  # the world directory
    config: WorldConfig  # the configuration it was generated from
    # images per split / set, e.g. "objects/train", "far/far_noise/val"
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0  # generation wall time (not saved)

    @property
    def id_folders(self) -> list[str]:
        """Folder names of the default ID split in sorted order (the label order of the loaders)."""
        return sorted(folder_name(c) for c in self.config.id_classes)

    def to_json(self) -> dict[str, Any]:
        """The ``world.json`` document."""
        cfg = self.config
        pre = set(cfg.pretrain_textures)
        return {
            "format_version": FORMAT_VERSION,
            "config": asdict(cfg),
            "categories": {folder_name(c): c for c in cfg.categories},
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
            "splits": {"objects": list(SPLITS), "far": list(EVAL_SPLITS), "covariate": list(EVAL_SPLITS)},
            "split_rule": "val is for development and selection; test only for the pre-registered evaluation",
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
    caption = object_caption(rng, specs, style, bg, cfg.caption_class_frac, cfg.caption_style_leads)
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
        for c in cfg.categories:
            for i in range(n):
                yield _Job(split, c, i, f"objects/{split}/{folder_name(c)}/{split}_{i:05d}.png", c, cfg.id_styles)
    far = {"val": ("far_val", cfg.n_far_val_per_set), "test": ("far", cfg.n_far_per_set)}
    for split, (stream, n) in far.items():
        for name, kinds in cfg.far_ood:
            for i in range(n):
                yield _Job(stream, name, i, f"far/{name}/{split}/{name}_{i:05d}.png", textures=kinds)
    cov = {"val": ("covariate_val", cfg.n_covariate_val_per_class), "test": ("covariate", cfg.n_covariate_per_class)}
    for split, (stream, n) in cov.items():
        for style in cfg.covariate_styles:
            for c in cfg.categories:
                for i in range(n):
                    rel = f"covariate/{style}/{split}/{folder_name(c)}/{style}_{i:05d}.png"
                    yield _Job(stream, f"{style}/{c}", i, rel, c, (style,))


def _count(jobs: list[_Job]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for job in jobs:
        parts = job.rel_path.split("/")
        # "pretrain", "objects/train", "far/far_noise/val", "covariate/sketch/test"
        key = "pretrain" if parts[0] == "pretrain" else "/".join(parts[:2] if parts[0] == "objects" else parts[:3])
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
        for sub in ("pretrain", "objects", "far", "covariate", "id", "ood", WORLD_FILE):
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
    manifest = WorldManifest(root=root, config=cfg, counts=_count(jobs), seconds=time.perf_counter() - start)
    (root / WORLD_FILE).write_text(json.dumps(manifest.to_json(), indent=2) + "\n", encoding="utf-8")
    logger.info("world written in %.1f s: %s", manifest.seconds, manifest.counts)
    return manifest


def _caption_job(args: tuple[WorldConfig, int]) -> dict[str, Any]:
    cfg, i = args
    _, record = _render_pretrain(cfg, _rng(cfg, _Job("pretrain", "", i, "")))
    return {"image": f"images/{i:06d}.png", **record}


def write_captions(cfg: WorldConfig, out_file: str | Path, *, workers: int = 1) -> Path:
    """Write the pretraining captions ``cfg`` gives a world's images, without writing an image.

    For caption ablations on one set of images: a world generated with another ``caption_*``
    setting has the same pretraining images (captions are drawn after the image), so the file
    written here, placed in the world's ``pretrain/`` folder, pairs those images with ``cfg``'s
    captions (``deltagate pretrain-tiny --captions``).

    Returns:
        The caption file.
    """
    out = Path(out_file)
    args = [(cfg, i) for i in range(cfg.n_pretrain)]
    if workers > 1:
        with get_context("spawn").Pool(workers) as pool:
            records = pool.map(_caption_job, args, chunksize=256)
    else:
        records = [_caption_job(a) for a in args]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return out


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
    if doc.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path}: world format {doc.get('format_version')} is not this code's {FORMAT_VERSION}; "
            "regenerate it with `deltagate data synth --overwrite`"
        )
    return WorldManifest(root=root, config=WorldConfig.from_dict(doc["config"]), counts=doc.get("counts", {}))


def ensure_world(cfg: WorldConfig, world_dir: str | Path, *, workers: int = 2) -> WorldManifest:
    """The world of ``cfg`` in ``world_dir``: reused when it draws the same images, else regenerated.

    A world that differs only in its default ID split or its captions is reused (no image depends on
    them): its captions are rewritten when they differ (:func:`write_captions`) and ``world.json``
    records the new config.
    """
    root = Path(world_dir)
    if (root / WORLD_FILE).is_file():
        try:
            old = load_world(root)
        except ValueError as exc:  # another format version
            logger.info("regenerating %s: %s", root, exc)
        else:
            if old.config.same_images(cfg):
                logger.info("reusing world %s", root)
                if not old.config.same_captions(cfg):
                    logger.info("rewriting its pretraining captions for the new caption settings")
                    write_captions(cfg, root / "pretrain" / CAPTIONS_FILE, workers=workers)
                manifest = WorldManifest(root=root, config=cfg, counts=old.counts)
                if old.config != cfg:
                    (root / WORLD_FILE).write_text(json.dumps(manifest.to_json(), indent=2) + "\n", encoding="utf-8")
                return manifest
    return generate_world(cfg, root, workers=workers, overwrite=True)


def with_overrides(cfg: WorldConfig, **changes: Any) -> WorldConfig:
    """A copy of ``cfg`` with some fields changed (validated); None values are ignored."""
    return replace(cfg, **{k: v for k, v in changes.items() if v is not None})

"""The synthetic world: determinism per seed, layout and world.json, configurable splits, captions."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest

from proxy.world.render import (
    STYLE_LEADS,
    STYLES,
    TEXTURES,
    object_caption,
    render_objects,
    render_texture,
    sample_object,
)
from proxy.world.shapes import CATEGORIES, category_prims, draw_mask, folder_name
from proxy.world.synth import (
    PRESETS,
    WORLD_FILE,
    WorldConfig,
    ensure_world,
    generate_world,
    load_world,
    write_captions,
)
from tests.proxy_support import TINY_WORLD

pytestmark = pytest.mark.unit


def _digest(root: Path) -> dict[str, str]:
    """Relative path -> sha1 of every file under root."""
    return {
        str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world") / "w"
    generate_world(TINY_WORLD, out)
    return out


def test_same_seed_gives_identical_files(world, tmp_path):
    again = tmp_path / "again"
    generate_world(TINY_WORLD, again)
    assert _digest(world) == _digest(again)


def test_another_seed_gives_other_images_in_the_same_layout(world, tmp_path):
    other = tmp_path / "other"
    generate_world(replace(TINY_WORLD, seed=TINY_WORLD.seed + 1), other)
    a, b = _digest(world), _digest(other)
    pngs = [k for k in a if k.endswith(".png")]
    assert set(a) == set(b)  # same files...
    assert sum(a[k] != b[k] for k in pngs) >= 0.95 * len(pngs)  # ...with different pixels


def test_parallel_workers_write_the_same_files(world, tmp_path):
    par = tmp_path / "par"
    generate_world(TINY_WORLD, par, workers=2)
    assert _digest(world) == _digest(par)


def test_layout_counts_and_world_json(world):
    cfg = TINY_WORLD
    cats = sorted(folder_name(c) for c in cfg.categories)
    for split, n in (("train", cfg.n_train_per_class), ("val", cfg.n_val_per_class), ("test", cfg.n_test_per_class)):
        assert sorted(d.name for d in (world / "objects" / split).iterdir()) == cats  # every category, any split
        assert all(len(list((world / "objects" / split / c).glob("*.png"))) == n for c in cats)
    for name, _ in cfg.far_ood:
        assert len(list((world / "far" / name / "val").glob("*.png"))) == cfg.n_far_val_per_set
        assert len(list((world / "far" / name / "test").glob("*.png"))) == cfg.n_far_per_set
    assert sorted(d.name for d in (world / "covariate").iterdir()) == sorted(cfg.covariate_styles)
    assert sorted(d.name for d in (world / "covariate" / "pixel" / "test").iterdir()) == cats
    assert all(len(list((world / "covariate" / "sketch" / "val" / c).glob("*.png"))) == cfg.n_covariate_val_per_class
               for c in cats)
    lines = (world / "pretrain" / "captions.jsonl").read_text().splitlines()
    assert len(lines) == cfg.n_pretrain == len(list((world / "pretrain" / "images").glob("*.png")))
    assert not (world / "id").exists() and not (world / "ood").exists()  # the split is chosen when reading

    doc = json.loads((world / WORLD_FILE).read_text())
    assert doc["format_version"] == 2
    assert doc["counts"]["objects/train"] == len(cats) * cfg.n_train_per_class
    assert doc["counts"]["far/far_noise/val"] == cfg.n_far_val_per_set
    assert doc["counts"]["pretrain"] == cfg.n_pretrain
    assert doc["near_classes"] == [c for c in cfg.categories if c not in cfg.id_classes]
    assert doc["far_ood"]["far_textures"]["unseen_kinds"] == ["waves", "plaid", "blobs"]
    assert doc["far_ood"]["far_noise"]["unseen_kinds"] == []
    assert load_world(world).config == cfg  # the config round-trips through JSON


def test_the_id_split_changes_no_file(world, tmp_path):
    other = tmp_path / "other-split"
    cfg = replace(TINY_WORLD, id_classes=("heart", "ring", "lightning bolt"))
    generate_world(cfg, other)
    a, b = _digest(world), _digest(other)
    assert {k: v for k, v in a.items() if k != WORLD_FILE} == {k: v for k, v in b.items() if k != WORLD_FILE}
    assert cfg.same_images(TINY_WORLD) and not replace(cfg, seed=9).same_images(TINY_WORLD)


def test_ensure_world_reuses_a_world_that_differs_only_in_its_split(world, tmp_path):
    root = tmp_path / "w"
    generate_world(TINY_WORLD, root)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*.png")}
    cfg = replace(TINY_WORLD, id_classes=("star", "heart"))
    ensure_world(cfg, root)
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.png")} == before  # nothing re-rendered
    assert load_world(root).config == cfg  # world.json names the new default split
    recaptioned = replace(cfg, caption_class_frac=1.0)
    ensure_world(recaptioned, root, workers=1)  # new captions, same images: only the captions are rewritten
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.png")} == before
    assert (root / "pretrain" / "captions.jsonl").read_text() == write_captions(
        recaptioned, tmp_path / "expected.jsonl").read_text()
    ensure_world(replace(cfg, n_val_per_class=1), root)  # a change of the images regenerates
    assert len(list((root / "objects" / "val" / "star").glob("*.png"))) == 1


def test_styles_and_far_sets_are_configurable(tmp_path):
    cfg = replace(
        TINY_WORLD,
        pretrain_styles=("flat", "outline", "shaded", "neon"),
        id_styles=("flat", "neon"),
        covariate_styles=("sketch",),
        far_ood=(("static", ("noise",)),),
    )
    out = tmp_path / "split"
    generate_world(cfg, out)
    assert [d.name for d in (out / "covariate").iterdir()] == ["sketch"]
    assert [d.name for d in (out / "far").iterdir()] == ["static"]
    assert load_world(out).config.id_styles == ("flat", "neon")


def test_caption_variants_share_the_images(world, tmp_path):
    # Captions are drawn after the image: another caption setting gives the same pixels, and
    # write_captions reproduces a world's caption file without rendering to disk.
    same = write_captions(TINY_WORLD, tmp_path / "same.jsonl")
    assert same.read_text() == (world / "pretrain" / "captions.jsonl").read_text()
    cfg = replace(TINY_WORLD, caption_style_leads=True, caption_class_frac=1.0)
    leads = [json.loads(x) for x in write_captions(cfg, tmp_path / "leads.jsonl").read_text().splitlines()]
    objects = [r for r in leads if r["kind"] == "object"]
    assert objects and all(r["caption"].startswith(STYLE_LEADS[r["style"]] + " ") for r in objects)
    other = tmp_path / "other"
    generate_world(replace(TINY_WORLD, caption_class_frac=1.0), other)
    assert _digest(world / "pretrain" / "images") == _digest(other / "pretrain" / "images")


def test_old_format_worlds_are_refused_with_a_hint(tmp_path):
    (tmp_path / WORLD_FILE).write_text(json.dumps({"format_version": 1, "config": {}}))
    with pytest.raises(ValueError, match="regenerate"):
        load_world(tmp_path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"id_classes": ("circle", "unicorn")}, "unknown ID classes"),
        ({"covariate_styles": ("flat",)}, "held-out"),
        ({"pretrain_styles": ("watercolour",)}, "unknown styles"),
        ({"far_ood": (("x", ("fog",)),)}, "unknown texture"),
        ({"id_classes": ("circle",)}, "at least 2"),
    ],
)
def test_invalid_configs_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        WorldConfig(**{**asdict(TINY_WORLD), **changes})


def test_existing_world_is_not_overwritten_silently(world, tmp_path):
    with pytest.raises(FileExistsError):
        generate_world(TINY_WORLD, world)


def test_presets_are_valid_and_default_is_the_documented_scale():
    default = PRESETS["default"]
    assert len(default.categories) >= 16 and 6 <= len(default.id_classes) <= 8
    assert not set(default.covariate_styles) & set(default.pretrain_styles)
    assert PRESETS["small"].n_pretrain < 1000


def test_every_category_has_a_visible_silhouette():
    for cat in CATEGORIES:
        mask = np.asarray(draw_mask(category_prims(cat), 64, (32, 32), 24, 30.0))
        assert 0.05 < (mask > 0).mean() < 0.9, cat


@pytest.mark.parametrize("style", list(STYLES))
def test_every_style_draws_the_object(style):
    rng = np.random.default_rng(0)
    spec = replace(sample_object(rng, "star"), size="large", radius=0.38, centre=(0.5, 0.5))
    img, _ = render_objects(np.random.default_rng(1), [spec], style, 64)
    arr = np.asarray(img, dtype=np.float32)
    assert img.size == (64, 64) and img.mode == "RGB"
    centre, corner = arr[24:40, 24:40].reshape(-1, 3), arr[:8, :8].reshape(-1, 3)
    # Something is drawn: the image is not uniform, and the object region differs from the corner.
    assert arr.std() > 5 and np.abs(centre.mean(0) - corner.mean(0)).max() + centre.std() > 5


@pytest.mark.parametrize("kind", list(TEXTURES))
def test_textures_render_with_a_caption_that_names_no_category(kind):
    for seed in range(5):
        img, caption = render_texture(np.random.default_rng(seed), kind, 32)
        assert img.size == (32, 32) and caption
        assert not any(re.search(rf"\b{c}\b", caption) for c in CATEGORIES), caption


def test_object_captions_name_every_object_and_vary():
    captions = set()
    for seed in range(200):
        rng = np.random.default_rng(seed)
        specs = [sample_object(rng, c) for c in ("heart", "lightning bolt")[: 1 + seed % 2]]
        style = ("flat", "outline", "shaded")[seed % 3]
        _, bg = render_objects(rng, specs, style, 32, supersample=1)
        caption = object_caption(rng, specs, style, bg)
        assert all(s.category in caption for s in specs)
        captions.add(caption)
    assert len(captions) > 100  # diverse: few exact duplicates (they would be contrastive false negatives)


def test_pretraining_captions_match_their_images(world):
    records = [json.loads(x) for x in (world / "pretrain" / "captions.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in records} <= {"object", "texture"}
    for r in records:
        assert (world / "pretrain" / r["image"]).is_file()
        assert all(c in r["caption"] for c in r["categories"])
        if r["kind"] == "texture":
            assert r["texture"] in TINY_WORLD.pretrain_textures
        else:
            assert r["style"] in TINY_WORLD.pretrain_styles

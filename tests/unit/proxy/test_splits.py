"""ID splits of a world: every index of a split, per-category near OOD, look-alikes, random splits."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.train.data.folders import TaskPaths
from proxy.world.shapes import CATEGORIES, LOOKALIKES, folder_name, lookalikes_of
from proxy.world.splits import is_world, load_task_root, random_id_splits, world_split
from proxy.world.synth import generate_world
from tests.offline_support import make_task_dirs
from tests.proxy_support import TINY_WORLD

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world") / "w"
    generate_world(TINY_WORLD, out)
    return out


def _categories_of(paths) -> set[str]:
    return {p.parent.name for p in paths}


def test_default_split_indexes_every_set(world):
    cfg = TINY_WORLD
    s = world_split(world)
    assert s.id_classes == ("circle", "square", "star", "triangle")  # label order = sorted folder names
    for idx, n in ((s.train, cfg.n_train_per_class), (s.val, cfg.n_val_per_class), (s.test, cfg.n_test_per_class)):
        assert len(idx) == 4 * n and sorted(set(idx.labels)) == [0, 1, 2, 3]
        assert all(idx.class_folders[y] == p.parent.name for p, y in zip(idx.paths, idx.labels, strict=True))
    assert s.near_classes == ("heart", "ring", "spiral", "lightning bolt")
    for c, idx in s.near_test.items():
        assert len(idx) == cfg.n_test_per_class and _categories_of(idx.paths) == {folder_name(c)}
        assert set(idx.labels) == {-1}
    assert {k: len(v) for k, v in s.far_val.items()} == {"far_noise": 1, "far_textures": 1}
    assert set(s.covariate_test) == {"sketch", "pixel"}
    cov = s.covariate_test["pixel"]
    assert cov.class_folders == s.test.class_folders and len(cov) == 4 * cfg.n_covariate_per_class
    assert s.hard_near == ("ring",)  # the look-alike of circle among the near categories


def test_id_and_near_never_share_an_image_and_near_val_is_not_near_test(world):
    s = world_split(world)
    ids = set(s.train.paths) | set(s.val.paths) | set(s.test.paths)
    near_val = {p for idx in s.near_val.values() for p in idx.paths}
    near_test = {p for idx in s.near_test.values() for p in idx.paths}
    assert not ids & (near_val | near_test) and not near_val & near_test


def test_another_split_of_the_same_world_swaps_roles(world):
    a, b = world_split(world), world_split(world, ["heart", "ring", "lightning bolt"])
    assert b.id_classes == ("heart", "lightning bolt", "ring")
    assert set(b.near_classes) == {"circle", "square", "triangle", "star", "spiral"}
    # The same files: ring's test images are near-OOD test under one split and ID test under the other.
    ring_label = b.test.class_folders.index("ring")
    assert set(a.near_test["ring"].paths) == {p for p, y in zip(b.test.paths, b.test.labels, strict=True)
                                              if y == ring_label}
    assert b.hard_near == ("circle",)


def test_task_view_of_a_split(world):
    s = world_split(world)
    val_task, test_task = s.task("val"), s.task("test")
    assert val_task.test is s.val and test_task.test is s.test  # development never reads test images
    assert set(val_task.ood) == {"near", "near_hard", "far_noise", "far_textures"}
    assert len(val_task.ood["near"]) == sum(len(v) for v in s.near_val.values())
    assert _categories_of(val_task.ood["near_hard"].paths) == {"ring"}
    assert val_task.covariate is s.covariate_val and test_task.covariate is s.covariate_test
    # Each pooled near image's sub-folder (relative to the pooled root) is its category.
    root = val_task.ood["near"].root
    assert {p.parent.relative_to(root).as_posix() for p in val_task.ood["near"].paths} == {
        folder_name(c) for c in s.near_classes}


def test_bad_splits_are_refused(world):
    with pytest.raises(ValueError, match="unknown ID classes"):
        world_split(world, ["circle", "unicorn"])
    with pytest.raises(ValueError, match="at least 2"):
        world_split(world, ["circle"])


def test_load_task_root_reads_worlds_and_the_standard_layout(world, tmp_path):
    assert is_world(world) and not is_world(tmp_path)
    assert load_task_root(world).class_names == ("circle", "square", "star", "triangle")
    assert load_task_root(world, id_classes=["heart", "ring"], split="val").test.class_folders == ("heart", "ring")
    data = make_task_dirs(tmp_path / "data")
    assert load_task_root(data).summary() == load_task_root(data).summary()
    assert load_task_root(data).train.root == TaskPaths.from_root(data).train
    with pytest.raises(ValueError, match="not a synthetic world"):
        load_task_root(data, id_classes=["a", "b"])


def test_random_splits_are_reproducible_distinct_and_extend():
    five = random_id_splits(CATEGORIES, 8, 5, seed=0)
    assert five == random_id_splits(CATEGORIES, 8, 5, seed=0)
    assert random_id_splits(CATEGORIES, 8, 7, seed=0)[:5] == five
    assert len(set(five)) == 5 and all(len(s) == 8 and set(s) <= set(CATEGORIES) for s in five)
    assert random_id_splits(CATEGORIES, 8, 5, seed=1) != five
    with pytest.raises(ValueError, match="distinct splits"):
        random_id_splits(("a", "b", "c"), 2, 4, seed=0)
    with pytest.raises(ValueError, match="n_classes"):
        random_id_splits(("a", "b", "c"), 3, 1, seed=0)


def test_lookalikes_are_known_categories_and_symmetric():
    assert all(a in CATEGORIES and b in CATEGORIES and a != b for a, b in LOOKALIKES)
    assert "ellipse" in lookalikes_of(["circle"]) and "circle" in lookalikes_of(["ellipse"])
    assert lookalikes_of(["circle", "ellipse"]) == tuple(c for c in lookalikes_of(["circle", "ellipse"])
                                                          if c not in ("circle", "ellipse"))

"""Readers of real-data layouts: ImageFolder, class-name files, OOD and covariate sets, few-shot, bad files."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from torch.utils.data import DataLoader

from models.errors import DataError
from models.preprocess import PreprocessConfig
from models.train.data.folders import (
    ImageFolderDataset,
    TaskPaths,
    collate_skip_bad,
    few_shot,
    load_images,
    load_task,
    read_captions,
    read_class_names,
    scan_covariate,
    scan_image_folder,
    scan_unlabelled,
)
from tests.train_support import make_image_folder, write_png

pytestmark = pytest.mark.unit

PRE = PreprocessConfig(image_size=16)


@pytest.fixture
def folder(tmp_path):
    """3 classes (5, 4, 6 images), a text file, a hidden file, a corrupt PNG and a loose file at the root."""
    root = make_image_folder(tmp_path / "train", {"lightning_bolt": 5, "n01": 4, "circle": 6})
    (root / "circle" / "notes.txt").write_text("not an image")
    (root / "circle" / ".DS_Store").write_bytes(b"\0\1")
    (root / "n01" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    (root / "README.md").write_text("loose file")
    return root


def test_classes_come_from_sorted_folders_and_non_images_are_skipped(folder):
    index = scan_image_folder(folder)
    assert index.class_folders == ("circle", "lightning_bolt", "n01")
    assert index.class_names == ("circle", "lightning bolt", "n01")
    assert index.per_class() == {0: 6, 1: 5, 2: 5}  # n01 counts the corrupt .png: it is found by name
    assert index.skipped == 3  # notes.txt, .DS_Store, README.md


def test_unreadable_images_are_skipped_and_counted(folder, caplog):
    with caplog.at_level(logging.WARNING):
        loaded = load_images(scan_image_folder(folder), PRE)
    assert len(loaded.bad) == 1 and loaded.bad[0].name == "broken.png"
    assert loaded.pixels.shape == (15, 3, 16, 16) and loaded.labels.tolist().count(2) == 4
    assert f"skipped 1 unreadable image(s) of 16: {folder / 'n01' / 'broken.png'}" in caplog.text


def test_lazy_dataset_never_crashes_an_epoch(folder, caplog):
    ds = ImageFolderDataset(scan_image_folder(folder), PRE)
    with caplog.at_level(logging.WARNING):
        batches = [b for b in DataLoader(ds, batch_size=4, collate_fn=collate_skip_bad) if b is not None]
    assert sum(len(y) for _, y in batches) == 15 and len(ds.bad) == 1
    assert "broken.png" in caplog.text
    assert collate_skip_bad([None, None]) is None


def test_class_names_file_plain_and_id_forms(folder, tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("# comment\nround thing\n\nbolt\nfish\n")
    assert scan_image_folder(folder, plain).class_names == ("round thing", "bolt", "fish")
    ids = tmp_path / "ids.txt"  # CoOp's ImageNet form "<wnid> <name>", in any order
    ids.write_text("n01 tench, Tinca tinca\ncircle round thing\nlightning_bolt bolt\n")
    assert scan_image_folder(folder, ids).class_names == ("round thing", "bolt", "tench, Tinca tinca")
    assert read_class_names(ids) == ["n01 tench, Tinca tinca", "circle round thing", "lightning_bolt bolt"]
    short = tmp_path / "short.txt"
    short.write_text("one\ntwo\n")
    with pytest.raises(ValueError, match="2 names but there are 3"):
        scan_image_folder(folder, short)
    assert scan_image_folder(folder, ["a", "b", "c"]).class_names == ("a", "b", "c")


def test_few_shot_is_seeded_and_gives_k_per_class_even_with_bad_files(folder, caplog):
    index = scan_image_folder(folder)
    with caplog.at_level(logging.WARNING):
        a, b = few_shot(index, 4, seed=1), few_shot(index, 4, seed=1)
    assert f"passed over 1 unreadable image(s): {folder / 'n01' / 'broken.png'}" in caplog.text  # named
    assert a.paths == b.paths
    assert a.per_class() == {0: 4, 1: 4, 2: 4}  # n01 has 4 readable of 5 files: the broken one is passed over
    assert all(p.name != "broken.png" for p in a.paths)
    assert any(few_shot(index, 2, seed=s).paths != few_shot(index, 2, seed=1).paths for s in (2, 3, 4))
    # A class's sample depends on its own files only, not on the other classes.
    fewer = scan_image_folder(folder).subset([i for i, y in enumerate(index.labels) if y != 1])
    assert [p for p in few_shot(fewer, 2, seed=7).paths if p.parent.name == "circle"] == [
        p for p in few_shot(index, 2, seed=7).paths if p.parent.name == "circle"
    ]
    assert few_shot(index, 100, seed=0).per_class() == {0: 6, 1: 5, 2: 4}  # fewer than k: all (warned)
    assert few_shot(index, 0, seed=0) is index


def test_ood_sets_flat_or_nested(tmp_path):
    write_png(tmp_path / "flat" / "a.png", 1)
    (tmp_path / "flat" / "b.jpg.txt").write_bytes((tmp_path / "flat" / "a.png").read_bytes())
    write_png(tmp_path / "nested" / "x" / "y" / "c.png", 3)
    write_png(tmp_path / "nested" / "d.png", 4)
    assert [p.name for p in scan_unlabelled(tmp_path / "flat").paths] == ["a.png"]
    nested = scan_unlabelled(tmp_path / "nested")
    assert len(nested) == 2 and set(nested.labels) == {-1}
    with pytest.raises(FileNotFoundError):
        scan_unlabelled(tmp_path / "missing")


def test_covariate_labels_align_to_the_id_classes(folder, tmp_path):
    cov = make_image_folder(tmp_path / "cov", {"n01": 2, "circle": 1, "zebra": 3})
    index = scan_covariate(cov, scan_image_folder(folder))
    assert index.class_folders == ("circle", "lightning_bolt", "n01")
    assert sorted(index.labels) == [0, 2, 2]  # zebra is not an ID class: skipped
    with pytest.raises(ValueError, match="none of its folders"):
        scan_covariate(make_image_folder(tmp_path / "other", {"zebra": 1}), scan_image_folder(folder))


def test_task_layout_from_root(tmp_path):
    root = tmp_path / "data"
    for split in ("train", "val", "test"):
        make_image_folder(root / "id" / split, {"cat": 2, "dog": 2})
    write_png(root / "ood" / "far" / "x.png", 0)
    make_image_folder(root / "covariate" / "sketch", {"dog": 1})
    (root / "id" / "classnames.txt").write_text("kitty\npuppy\n")
    task = load_task(TaskPaths.from_root(root))
    assert task.class_names == ("kitty", "puppy") and task.test is not None
    assert task.test.class_names == ("kitty", "puppy")
    assert task.summary() == {
        "classes": ["kitty", "puppy"], "train": 4, "val": 4, "test": 4, "ood/far": 1, "covariate/sketch": 1,
    }
    make_image_folder(root / "id" / "val", {"bird": 1})
    with pytest.raises(DataError, match="class folders differ from .*: val has bird that train lacks; val and train"):
        load_task(TaskPaths.from_root(root))
    with pytest.raises(FileNotFoundError, match="id/train"):
        TaskPaths.from_root(tmp_path / "nothing")


def test_read_captions_jsonl_and_csv(tmp_path):
    write_png(tmp_path / "img" / "a.png", 0)
    (tmp_path / "captions.jsonl").write_text(
        json.dumps({"image": "img/a.png", "caption": "a red star"}) + "\n" + json.dumps({"image": "img/b.png"}) + "\n"
    )
    paths, caps = read_captions(tmp_path)
    assert paths == [tmp_path / "img" / "a.png"] and caps == ["a red star"]
    (tmp_path / "c.csv").write_text("filepath,title\nimg/a.png,a blue ring\n")
    assert read_captions(tmp_path / "c.csv") == ([tmp_path / "img" / "a.png"], ["a blue ring"])


def test_load_images_keeps_paths_labels_and_dtype(folder):
    index = scan_image_folder(folder)
    loaded = load_images(index.paths[:3], PRE, dtype=torch.float16, labels=[5, 6, 7])
    assert loaded.pixels.dtype == torch.float16 and loaded.labels.tolist() == [5, 6, 7]
    assert loaded.paths == list(index.paths[:3])

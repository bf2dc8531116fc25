"""``--data`` names a standard-layout folder or a synthetic world; the product reads the first only."""

from __future__ import annotations

from pathlib import Path

import pytest

from deltagate.commands.task_data import eval_data, id_val_index, read_task
from models.preprocess import PreprocessConfig
from models.train.data.folders import TaskData
from models.train.quantize import eval_images_from_data
from proxy.world.synth import generate_world
from tests.offline_support import TASK_CLASSES, make_task_dirs
from tests.proxy_support import TINY_WORLD

pytestmark = pytest.mark.unit

PRE = PreprocessConfig(image_size=16)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world") / "w"
    generate_world(TINY_WORLD, out)
    return out


def test_a_world_is_read_with_the_bundles_classes_as_its_id_split(world: Path) -> None:
    task = eval_data(world, ["heart", "ring", "star"])
    assert isinstance(task, TaskData) and task.class_names == ("heart", "ring", "star")
    images = eval_images_from_data(task, PRE, ["heart", "ring", "star"])
    sets = "near,near_hard,far_noise,far_textures"
    assert images.description == f"id/test + ood/{{{sets}}} of {world} (threshold: id/val)"
    assert images.id_test.shape == (3 * TINY_WORLD.n_test_per_class, 3, 16, 16)  # (N, 3, H, W)


def test_a_folder_is_passed_on_and_read_by_the_product(tmp_path: Path) -> None:
    root = make_task_dirs(tmp_path / "data")
    assert eval_data(root, list(TASK_CLASSES)) == root and eval_data(None, []) is None
    images = eval_images_from_data(root, PRE, list(TASK_CLASSES))
    assert images.description == f"id/test + ood/{{near,noise}} of {root} (threshold: id/val)"
    with pytest.raises(ValueError, match="differ from the bundle's"):
        eval_images_from_data(root, PRE, ["a", "b"])


def test_train_and_calibrate_read_both_layouts(world: Path, tmp_path: Path) -> None:
    root = make_task_dirs(tmp_path / "data")
    assert read_task(root).class_names == TASK_CLASSES
    assert read_task(world).class_names == ("circle", "square", "star", "triangle")  # the world's default split
    assert len(id_val_index(root)) == 4 * len(TASK_CLASSES)
    assert len(id_val_index(world)) == 4 * TINY_WORLD.n_val_per_class

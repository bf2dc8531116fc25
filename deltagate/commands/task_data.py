"""What a ``--data`` option names: a folder in the standard layout, or a synthetic world.

The product's offline code (:mod:`models.train`) reads the standard layout only
(:class:`models.train.data.folders.TaskPaths`). A synthetic world of the proxy research
(``deltagate data synth``) is recognised here, at the top of the layering, and read through
:mod:`proxy.world`, so every command that takes ``--data`` accepts both, as it always has.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from models.train.data.folders import FolderIndex, TaskData


def read_task(data: Path, class_names: Path | None = None) -> TaskData:
    """The task of a data root: a world's default ID split, or the standard layout (``train``, ``evaluate``)."""
    from proxy.world.splits import load_task_root

    return load_task_root(data, class_names)


def id_val_index(data: Path) -> FolderIndex:
    """ID validation images of a data root (``calibrate --data``): ``ROOT/id/val``, or a world's ID val."""
    from models.train.data.folders import scan_image_folder
    from proxy.world.splits import is_world, world_split

    return world_split(data).val if is_world(data) else scan_image_folder(data / "id" / "val")


def eval_data(data: Path | None, classes: list[str]) -> Path | TaskData | None:
    """The evaluation data of a bundle with these classes (``export`` / ``quantize --data``).

    A standard-layout root is passed on as it is (:func:`models.train.quantize.eval_images_from_data`
    reads it); a world is read with the bundle's classes as its ID split (a world holds several).
    """
    from proxy.world.splits import is_world, world_split

    if data is None or not is_world(data):
        return data
    return world_split(data, classes).task("test")

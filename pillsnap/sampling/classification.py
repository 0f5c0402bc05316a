"""The classification validation set: ``{root}/val/<class_dir>/*`` grouped by class index.

``split`` picks another folder of the same layout (``train`` for INT8 calibration).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pillsnap.exceptions import DataError, MissingPathError
from pillsnap.sampling.sample import DatasetIndex, images_in

if TYPE_CHECKING:
    from pillsnap.classmap import ClassMap


def index_classification(
    data_root: str | Path, class_map: ClassMap, split: str = "val"
) -> DatasetIndex:
    """``{data_root}/<split>/<class_dir>/*`` grouped by the class map's index of ``class_dir``."""
    root = Path(data_root)
    val = root / split
    if not val.is_dir():
        raise MissingPathError(
            f"classification {split} folder not found: {val} (config key "
            f"`paths.classification_data` must hold {split}/<class_dir>/); regenerate it with `pillsnap synth`"
        )
    index = DatasetIndex(val, {})
    by_dir = class_map.index_of_dir()
    unknown = []
    for folder in sorted(p for p in val.iterdir() if p.is_dir()):
        if folder.name not in by_dir:
            unknown.append(folder.name)
            continue
        images = images_in(folder)
        if not images:
            index.empty_classes.append(folder.name)
            continue
        index.groups[by_dir[folder.name]] = images
    if unknown:
        index.notes.append(
            f"{len(unknown)} val folder(s) not in the class map were ignored: {', '.join(unknown[:5])}"
        )
    missing = len(class_map) - len(index.groups) - len(index.empty_classes)
    if missing > 0:
        index.notes.append(f"{missing} of {len(class_map)} classes have no val folder")
    if index.empty_classes:
        index.notes.append(
            f"{len(index.empty_classes)} class folder(s) are empty: {', '.join(index.empty_classes[:5])}"
        )
    if not index.groups:
        raise DataError(
            f"no validation images under {val}: expected val/<class_dir>/*.jpg with class_dir from the class map "
            f"(e.g. {next(iter(by_dir), 'c0000')}); regenerate the data with `pillsnap synth`"
        )
    return index

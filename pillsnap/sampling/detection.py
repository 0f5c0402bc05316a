"""The detection validation set: the ``val`` photos of an Ultralytics data YAML, by pill count."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from pillsnap.exceptions import DataError, MissingPathError
from pillsnap.sampling.sample import IMAGE_SUFFIXES, DatasetIndex, SkippedFile

MAX_PILL_STRATUM = 5


def detection_val_images(data_yaml: str | Path, split: str = "val") -> list[Path]:
    """The ``split`` images of an Ultralytics data YAML (a folder, a .txt list, or a list of either)."""
    import yaml

    data_yaml = Path(data_yaml)
    if not data_yaml.is_file():
        raise MissingPathError(
            f"detection data YAML not found: {data_yaml} (config key `paths.detection_data`)"
        )
    spec = yaml.safe_load(data_yaml.read_text()) or {}
    if split not in spec:
        raise DataError(
            f"{data_yaml} has no `{split}` entry; expected an Ultralytics data YAML with path/train/val/names"
        )
    base = Path(spec.get("path") or data_yaml.parent)
    base = base if base.is_absolute() else (data_yaml.parent / base)
    images: list[Path] = []
    for entry in spec[split] if isinstance(spec[split], list) else [spec[split]]:
        p = Path(entry) if Path(entry).is_absolute() else base / entry
        if p.is_dir():
            images += sorted(
                q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES
            )
        elif p.suffix == ".txt" and p.is_file():
            images += [
                (base / line.strip())
                if not Path(line.strip()).is_absolute()
                else Path(line.strip())
                for line in p.read_text().splitlines()
                if line.strip()
            ]
        else:
            raise MissingPathError(
                f"detection {split} entry {entry!r} of {data_yaml} does not exist (looked for {p})"
            )
    return images


def detection_label_path(image: Path) -> Path:
    """Ultralytics' rule: ``.../images/x.jpg`` -> ``.../labels/x.txt``."""
    parts = list(image.parts)
    for i in range(len(parts) - 1, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def read_yolo_labels(image: Path) -> np.ndarray:
    """``[M,5]`` float32 (class, cx, cy, w, h normalised); a photo without a label file has no pills."""
    path = detection_label_path(image)
    if not path.is_file():
        return np.zeros((0, 5), np.float32)
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    try:
        labels = np.asarray(rows, np.float32).reshape(-1, 5)
    except ValueError as exc:
        raise DataError(f"{path}: expected 'class cx cy w h' per line: {exc}") from exc
    return labels


def index_detection(data_yaml: str | Path, split: str = "val") -> DatasetIndex:
    """The ``split`` photos (default val) grouped by pill count (capped at ``MAX_PILL_STRATUM``)."""
    images = detection_val_images(data_yaml, split)
    index = DatasetIndex(Path(data_yaml), defaultdict(list))
    for image in images:
        try:
            n = len(read_yolo_labels(image))
        except DataError as exc:
            index.skipped.append(SkippedFile(str(image), str(exc)))
            continue
        index.groups[min(n, MAX_PILL_STRATUM)].append(image)
    index.groups = dict(index.groups)
    if not index.groups:
        raise DataError(
            f"no validation photos found for {data_yaml}; expected images under its `val` entry "
            f"and YOLO labels next to them (images/ -> labels/)"
        )
    return index

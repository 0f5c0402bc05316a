"""Which validation images the Torch <-> ONNX comparison looks at, and why.

Every mode is stratified, seeded and reproducible (same config + same files ->
same sample), and the result says how many classes and images it holds and why
that is fewer than asked:

* ``smoke``: ``sample_count`` images, one per class in a shuffled class order,
  then a second round, ... (as many distinct classes as the count allows);
* ``coverage``: ``per_class_k`` per class over at least ``min_classes`` classes
  (when the dataset has them), at most ``max_total`` images; when the three
  settings contradict each other ``max_total`` wins, then ``min_classes``;
* ``full``: every validation image (a list of paths; pixels are decoded batch by
  batch by the caller, so memory stays bounded).

Hardness bins: in smoke and coverage mode a small pool of extra images is scored
by the Torch model (top-1 probability) and ``hard_per_bin`` per bin of
``hardness_bins`` are added, so that cases near the decision boundary are always
compared. ``hardness_candidates`` picks the pool, the caller runs Torch on it
once (and reuses those outputs in the comparison), ``add_hard_cases`` picks.

Detection photos are stratified by their number of labelled pills (0, 1, ...,
``MAX_PILL_STRATUM`` and more), because crowded photos are where NMS and
box-level differences show up.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pillsnap.exceptions import DataError, MissingPathError

if TYPE_CHECKING:
    from pillsnap.classmap import ClassMap
    from pillsnap.config import CompareConfig

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
MAX_PILL_STRATUM = 5
HARD_POOL_FACTOR = 8
"""Candidates scored per hardness bin and per requested hard case (pool = factor x bins x per_bin)."""


@dataclass(frozen=True)
class SampleItem:
    path: Path
    label: int
    """Classification: class index. Detection: pill-count stratum (capped at ``MAX_PILL_STRATUM``)."""
    source: str = "base"
    """``base`` or the hardness bin it was added for, e.g. ``hard[0.30,0.60)``."""


@dataclass(frozen=True)
class SkippedFile:
    path: str
    reason: str


@dataclass
class Sample:
    """A reproducible sample plus everything the report says about it."""

    task: str
    mode: str
    policy: str
    items: list[SampleItem]
    requested: int
    available_images: int
    available_classes: int
    notes: list[str] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    hardness: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def sampled_images(self) -> int:
        return len(self.items)

    @property
    def sampled_classes(self) -> int:
        return len({it.label for it in self.items})

    def summary(self) -> str:
        unit = "classes" if self.task == "classification" else "pill-count strata"
        return (
            f"{self.task} sample ({self.mode}): {self.sampled_images} images from {self.sampled_classes} {unit} "
            f"(asked {self.requested}); {len(self.skipped)} skipped"
        )


# -- dataset indexes ---------------------------------------------------------------------------


@dataclass
class DatasetIndex:
    """The validation images of one dataset grouped by stratum (class index or pill count)."""

    root: Path
    groups: dict[int, list[Path]]
    empty_classes: list[str] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def image_count(self) -> int:
        return sum(len(v) for v in self.groups.values())


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def index_classification(data_root: str | Path, class_map: ClassMap) -> DatasetIndex:
    """``{data_root}/val/<class_dir>/*`` grouped by the class map's index of ``class_dir``."""
    root = Path(data_root)
    val = root / "val"
    if not val.is_dir():
        raise MissingPathError(
            f"classification validation folder not found: {val} (config key "
            f"`paths.classification_data` must hold val/<class_dir>/); regenerate it with `pillsnap synth`"
        )
    index = DatasetIndex(val, {})
    by_dir = class_map.index_of_dir()
    unknown = []
    for folder in sorted(p for p in val.iterdir() if p.is_dir()):
        if folder.name not in by_dir:
            unknown.append(folder.name)
            continue
        images = _images_in(folder)
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


def detection_val_images(data_yaml: str | Path) -> list[Path]:
    """The ``val`` images of an Ultralytics data YAML (a folder, a .txt list, or a list of either)."""
    import yaml

    data_yaml = Path(data_yaml)
    if not data_yaml.is_file():
        raise MissingPathError(
            f"detection data YAML not found: {data_yaml} (config key `paths.detection_data`)"
        )
    spec = yaml.safe_load(data_yaml.read_text()) or {}
    if "val" not in spec:
        raise DataError(
            f"{data_yaml} has no `val` entry; expected an Ultralytics data YAML with path/train/val/names"
        )
    base = Path(spec.get("path") or data_yaml.parent)
    base = base if base.is_absolute() else (data_yaml.parent / base)
    images: list[Path] = []
    for entry in spec["val"] if isinstance(spec["val"], list) else [spec["val"]]:
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
                f"detection val entry {entry!r} of {data_yaml} does not exist (looked for {p})"
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


def index_detection(data_yaml: str | Path) -> DatasetIndex:
    """Val photos grouped by pill count (capped at ``MAX_PILL_STRATUM``)."""
    images = detection_val_images(data_yaml)
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


# -- sampling ----------------------------------------------------------------------------------


def probe_image(path: Path) -> str | None:
    """Why ``path`` cannot be an image (header check, no full decode), or None when it looks fine."""
    from PIL import Image, UnidentifiedImageError

    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        with Image.open(path) as img:
            if img.width <= 0 or img.height <= 0:
                return f"image has size {img.size}"
    except (UnidentifiedImageError, ImportError):
        # ImportError: Ultralytics' PIL.Image.open patch tries the absent pi_heif plugin on unknown formats.
        return "not a readable image: unknown or corrupt image format"
    except (OSError, ValueError) as exc:
        return f"not a readable image: {exc}"
    return None


def _take_readable(paths: list[Path], k: int, skipped: list[SkippedFile]) -> list[Path]:
    """The first ``k`` readable paths, recording the unreadable ones met on the way."""
    chosen: list[Path] = []
    for p in paths:
        if len(chosen) == k:
            break
        reason = probe_image(p)
        if reason:
            skipped.append(SkippedFile(str(p), reason))
        else:
            chosen.append(p)
    return chosen


def sample_dataset(
    index: DatasetIndex, cfg: CompareConfig, task: str, mode: str | None = None
) -> Sample:
    """Draw the base sample of ``index`` for ``mode`` (default ``cfg.mode``); see the module doc."""
    mode = mode or cfg.mode
    rng = random.Random(f"{cfg.seed}:{task}:{mode}")
    groups = {k: rng.sample(v, len(v)) for k, v in sorted(index.groups.items())}
    skipped = list(index.skipped)
    notes = list(index.notes)
    n_avail = index.image_count
    unit = "classes" if task == "classification" else "pill-count strata"
    if mode == "full":
        items = [SampleItem(p, k) for k in sorted(index.groups) for p in index.groups[k]]
        policy = "full: every validation image, decoded batch by batch"
        return Sample(
            task,
            mode,
            policy,
            items,
            n_avail,
            n_avail,
            len(groups),
            notes,
            skipped,
            list(index.empty_classes),
        )
    if mode == "smoke" or (mode == "coverage" and task == "detection"):
        if mode == "smoke":
            requested = cfg.sample_count if task == "classification" else cfg.detection_sample_count
            policy = f"smoke: {requested} random images, stratified round-robin over {unit} (seed {cfg.seed})"
        else:
            requested = min(cfg.max_total, n_avail)
            policy = f"coverage: every val photo up to max_total={cfg.max_total}, stratified by pill count (seed {cfg.seed})"
        chosen = _round_robin(groups, requested, rng, skipped)
    elif mode == "coverage":
        chosen, requested, policy = _coverage(groups, cfg, rng, skipped, notes)
    else:
        raise DataError(f"unknown compare mode {mode!r}; expected smoke, coverage or full")
    items = [SampleItem(p, k) for k in sorted(chosen) for p in chosen[k]]
    if not items:
        raise DataError(
            f"none of the {n_avail} {task} validation images under {index.root} is readable "
            f"(first problems: {'; '.join(f'{s.path}: {s.reason}' for s in skipped[:3])})"
        )
    if len(items) < requested:
        notes.append(
            f"sampled {len(items)} of {requested} requested images: dataset has only {n_avail} images in "
            f"{len(groups)} {unit}" + (f", {len(skipped)} unreadable" if skipped else "")
        )
    return Sample(
        task,
        mode,
        policy,
        items,
        requested,
        n_avail,
        len(groups),
        notes,
        skipped,
        list(index.empty_classes),
    )


def _round_robin(
    groups: dict[int, list[Path]], requested: int, rng: random.Random, skipped: list[SkippedFile]
) -> dict[int, list[Path]]:
    """One readable image per stratum per round, strata in a shuffled order, until ``requested``."""
    order = rng.sample(sorted(groups), len(groups))
    chosen: dict[int, list[Path]] = defaultdict(list)
    cursor = dict.fromkeys(order, 0)
    total = 0
    while total < requested and any(cursor[k] < len(groups[k]) for k in order):
        for k in order:
            if total >= requested:
                break
            while cursor[k] < len(groups[k]):
                cursor[k] += 1
                if _take_readable([groups[k][cursor[k] - 1]], 1, skipped):
                    chosen[k].append(groups[k][cursor[k] - 1])
                    total += 1
                    break
    return chosen


def _coverage(
    groups: dict[int, list[Path]],
    cfg: CompareConfig,
    rng: random.Random,
    skipped: list[SkippedFile],
    notes: list[str],
) -> tuple[dict[int, list[Path]], int, str]:
    n_avail = len(groups)
    n_classes = min(n_avail, max(cfg.min_classes, cfg.max_total // cfg.per_class_k))
    if n_classes > cfg.max_total:
        notes.append(
            f"max_total={cfg.max_total} caps the sample below min_classes={cfg.min_classes}"
        )
        n_classes = cfg.max_total
    k = max(1, min(cfg.per_class_k, cfg.max_total // n_classes))
    if k < cfg.per_class_k:
        notes.append(
            f"per_class_k lowered from {cfg.per_class_k} to {k} to reach {n_classes} classes within max_total={cfg.max_total}"
        )
    if n_avail < cfg.min_classes:
        notes.append(
            f"dataset has only {n_avail} classes with val images (min_classes={cfg.min_classes})"
        )
    classes = sorted(rng.sample(sorted(groups), n_classes))
    chosen = {c: _take_readable(groups[c], k, skipped) for c in classes}
    short = [c for c in classes if len(chosen[c]) < k]
    if short:
        notes.append(f"{len(short)} class(es) had fewer than {k} readable val images")
    policy = (
        f"coverage: {k} per class over {n_classes} classes (min_classes={cfg.min_classes}, "
        f"max_total={cfg.max_total}), seed {cfg.seed}"
    )
    return {c: v for c, v in chosen.items() if v}, n_classes * k, policy


# -- hardness bins -----------------------------------------------------------------------------


def bin_label(lo: float, hi: float, last: bool) -> str:
    return f"hard[{lo:.2f},{hi:.2f}{']' if last else ')'}"


def hardness_candidates(
    index: DatasetIndex, sample: Sample, cfg: CompareConfig
) -> list[SampleItem]:
    """A stratified random pool of not-yet-sampled images for the Torch model to score.

    Empty in full mode (everything is compared anyway) or when ``hard_per_bin`` is 0.
    """
    n_bins = len(cfg.hardness_bins) - 1
    if sample.mode == "full" or cfg.hard_per_bin == 0:
        return []
    pool_size = HARD_POOL_FACTOR * n_bins * cfg.hard_per_bin
    taken = {it.path for it in sample.items} | {Path(s.path) for s in sample.skipped}
    rng = random.Random(f"{cfg.seed}:hard:{sample.task}")
    rest = {
        k: rng.sample([p for p in v if p not in taken], len([p for p in v if p not in taken]))
        for k, v in sorted(index.groups.items())
    }
    order = rng.sample(sorted(rest), len(rest))
    pool: list[SampleItem] = []
    for round_ in range(max((len(v) for v in rest.values()), default=0)):
        for k in order:
            if len(pool) >= pool_size:
                return pool
            if round_ < len(rest[k]):
                pool.append(SampleItem(rest[k][round_], k))
    return pool


def add_hard_cases(
    sample: Sample, candidates: list[SampleItem], top1_prob: np.ndarray, cfg: CompareConfig
) -> list[SampleItem]:
    """Add up to ``hard_per_bin`` candidates per Torch top-1 probability bin to ``sample``.

    Returns the added items (in sample order); ``sample.hardness`` records, per bin,
    how many candidates fell in it and how many were added.
    """
    edges = cfg.hardness_bins
    probs = np.asarray(top1_prob, np.float64)
    if len(probs) != len(candidates):
        raise ValueError(f"{len(candidates)} candidates but {len(probs)} probabilities")
    rng = random.Random(f"{cfg.seed}:hardpick:{sample.task}")
    added: list[SampleItem] = []
    for b, (lo, hi) in enumerate(itertools.pairwise(edges)):
        last = b == len(edges) - 2
        inside = [i for i, p in enumerate(probs) if lo <= p < hi or (last and p == hi)]
        pick = sorted(rng.sample(inside, min(cfg.hard_per_bin, len(inside))))
        label = bin_label(lo, hi, last)
        sample.hardness[label] = {"candidates": len(inside), "added": len(pick)}
        added += [SampleItem(candidates[i].path, candidates[i].label, label) for i in pick]
        if len(pick) < cfg.hard_per_bin:
            sample.notes.append(
                f"{label}: {len(inside)} of {len(candidates)} scored candidates fell in this bin "
                f"({len(pick)} added of {cfg.hard_per_bin} asked)"
            )
    sample.items.extend(added)
    return added

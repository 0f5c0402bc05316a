"""Calibration data: which images, drawn how, and fed through the one pre-processing.

* Images come from ``quantize.calibration_split`` (default ``train``): never from the
  images the INT8 gate evaluates on. Classifier images are stratified by class,
  detector photos by pill count, with the same seeded round-robin the comparison
  samples use (``pillsnap.sampling``), ``quantize.calibration_count`` of them.
* When that split is absent (the demo data has only ``val``), a seeded half of val
  (half of each class / pill-count stratum) becomes the calibration pool and the
  gate leaves that whole half out (``CalibrationSet.reserved``); the record says so.
* ``CalibrationReader`` is ONNX Runtime's ``CalibrationDataReader`` protocol over
  ``pillsnap.preprocess``: ``preprocess_one`` for crops, ``letterbox`` for photos,
  decoded batch by batch, so calibration sees exactly what every engine is fed. It
  also keeps per-channel statistics of what it fed, which the diagnosis compares with
  the gate's inputs when INT8 fails (wrong colour order or normalisation shows there).
  ``CalibrationReader.from_arrays`` serves inputs already preprocessed in memory (the
  benchmark's INT8 models, ``benchmarks/int8_models.py``) through the same protocol.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pillsnap.exceptions import DataError, MissingPathError

if TYPE_CHECKING:
    from pillsnap.config import Config
    from pillsnap.sampling.sample import DatasetIndex, SampleItem

log = logging.getLogger(__name__)
Loader = Callable[[Path], np.ndarray]


@dataclass
class CalibrationSet:
    """The calibration images of one model, and where they came from."""

    task: str
    items: list[SampleItem]
    root: Path
    split: str
    fallback: bool
    """True: the configured split was absent and a seeded half of val was used."""
    reserved: frozenset[Path] = frozenset()
    """Images the gate must leave out (the calibration half of val; empty with a train split)."""
    notes: list[str] = field(default_factory=list)

    @property
    def paths(self) -> list[Path]:
        return [it.path for it in self.items]

    def relative_names(self) -> list[str]:
        """File names relative to the dataset root, so the digest is the same on any machine."""
        out = []
        for p in self.paths:
            try:
                out.append(p.relative_to(self.root).as_posix())
            except ValueError:
                out.append(p.as_posix())
        return out

    @property
    def sha256(self) -> str:
        return hashlib.sha256("\n".join(self.relative_names()).encode()).hexdigest()

    def to_record(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "split": self.split,
            "fallback": self.fallback,
            "count": len(self.items),
            "strata": len({it.label for it in self.items}),
            "sha256": self.sha256,
            "root": str(self.root),
            "files": self.relative_names(),
            "reserved_from_gate": len(self.reserved),
            "notes": list(self.notes),
        }


def calibration_set(cfg: Config, task: str) -> CalibrationSet:
    """Draw the calibration images of ``task`` (see the module doc)."""
    from pillsnap.config import CompareConfig
    from pillsnap.sampling.draw import sample_dataset

    q = cfg.quantize
    split, fallback, notes = q.calibration_split, False, []
    try:
        index = _index(cfg, task, split)
    except (MissingPathError, DataError) as exc:
        if split == "val":
            raise
        index, fallback = _val_half(cfg, task), True
        notes.append(
            f"no {split!r} split ({exc}); calibrated on a seeded half of val (seed {q.seed}), "
            f"which the INT8 gate leaves out"
        )
        log.warning("%s calibration: %s", task, notes[-1])
    draw = CompareConfig(
        sample_count=q.calibration_count, detection_sample_count=q.calibration_count, seed=q.seed
    )
    sample = sample_dataset(index, draw, task, "smoke")
    # Whatever the split, an image calibration saw never reaches the gate: a data.yaml whose
    # train and val share files must not let the gate grade INT8 on its own calibration.
    reserved = frozenset(it.path for it in sample.items)
    if fallback:
        reserved |= frozenset(p for v in index.groups.values() for p in v)
    elif split == "val":
        notes.append(
            "calibrated on val images (quantize.calibration_split=val); the gate leaves them out"
        )
    notes += [n for n in sample.notes if "sampled" in n]
    used = "val (half)" if fallback else split
    root = index.root if task == "classification" else index.root.parent
    result = CalibrationSet(task, list(sample.items), root, used, fallback, reserved, notes)
    log.info(
        "%s calibration: %d images from %s over %d strata (sha256 %s...)",
        task,
        len(result.items),
        used,
        len({it.label for it in result.items}),
        result.sha256[:12],
    )
    return result


def _index(cfg: Config, task: str, split: str) -> DatasetIndex:
    from pillsnap.classmap import ClassMap
    from pillsnap.config import require_path
    from pillsnap.sampling.classification import index_classification
    from pillsnap.sampling.detection import index_detection

    if task == "classification":
        root = require_path(
            cfg.paths.classification_data, "paths.classification_data", "the classification dataset"
        )
        return index_classification(root, ClassMap.load(cfg.paths.class_map_path), split)
    data = require_path(cfg.paths.detection_data, "paths.detection_data", "the detection data YAML")
    return index_detection(data, split)


def _val_half(cfg: Config, task: str) -> DatasetIndex:
    """A seeded half of each val stratum (rounded up), the calibration pool of the fallback."""
    from pillsnap.sampling.sample import DatasetIndex

    index = _index(cfg, task, "val")
    rng = random.Random(f"{cfg.quantize.seed}:calibration-half:{task}")
    groups = {}
    for k, paths in sorted(index.groups.items()):
        shuffled = rng.sample(paths, len(paths))
        groups[k] = sorted(shuffled[: (len(paths) + 1) // 2])
    return DatasetIndex(index.root, groups, list(index.empty_classes), list(index.skipped))


def default_loader(cfg: Config, task: str) -> Loader:
    """The shared pre-processing of ``task``: what every engine is fed."""
    from pillsnap.preprocess import PreprocessSpec, letterbox, load_image, preprocess_one

    if task == "classification":
        spec = PreprocessSpec.from_config(cfg.classification)
        return lambda path: preprocess_one(load_image(path), spec)
    imgsz = cfg.detection.imgsz
    return lambda path: letterbox(np.asarray(load_image(path)), imgsz)[0]


class CalibrationReader:
    """ONNX Runtime's ``CalibrationDataReader`` protocol over ``pillsnap.preprocess``.

    ``get_next`` returns ``{input_name: [B,3,H,W] float32}`` until the images are used
    up, then None; ``rewind`` starts over (one reader serves every calibration method).
    Unreadable images are skipped and counted. ``stats()`` describes what was fed.
    """

    def __init__(
        self,
        paths: list[Path],
        input_name: str,
        load: Loader,
        batch_size: int = 8,
    ):
        self.paths, self.input_name, self.load = list(paths), input_name, load
        self.batch_size = batch_size
        self.skipped: list[str] = []
        self._next = 0
        self._seen: set[int] = set()
        self._sum = self._sq = self._min = self._max = None
        self._count = self._images = 0

    @classmethod
    def from_arrays(
        cls, arrays: np.ndarray, input_name: str, batch_size: int = 8
    ) -> CalibrationReader:
        """A reader over inputs already preprocessed in memory (``[N,3,H,W]`` float32).

        For callers with no image files to draw from (the benchmark's production-size
        models are calibrated on seeded random inputs); batching, ``rewind``, ``skipped``
        and ``stats`` are the file reader's. ``paths`` are placeholders, ``array[i]``.
        """
        arrays = np.asarray(arrays, dtype=np.float32)
        if arrays.ndim != 4 or not len(arrays):
            raise DataError(
                f"calibration arrays: expected [N,3,H,W] inputs with N >= 1, got {arrays.shape}"
            )
        names = [Path(f"array[{i}]") for i in range(len(arrays))]
        index = {p: i for i, p in enumerate(names)}
        return cls(names, input_name, lambda p: arrays[index[p]], batch_size)

    def __len__(self) -> int:
        return (len(self.paths) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Any:
        self.rewind()
        while (batch := self.get_next()) is not None:
            yield batch

    def rewind(self) -> None:
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        while self._next < len(self.paths):
            start = self._next
            self._next += self.batch_size
            arrays = []
            for path in self.paths[start : self._next]:
                try:
                    arrays.append(self.load(path))
                except DataError as exc:
                    if start not in self._seen:
                        self.skipped.append(f"{path}: {exc}")
            if arrays:
                batch = np.ascontiguousarray(np.stack(arrays), dtype=np.float32)
                if start not in self._seen:
                    self._accumulate(batch)
                self._seen.add(start)
                return {self.input_name: batch}
            self._seen.add(start)
        return None

    def first_images(self, count: int) -> np.ndarray:
        """The first ``count`` readable calibration inputs (the per-layer sensitivity batch)."""
        out: list[np.ndarray] = []
        for path in self.paths:
            if len(out) >= count:
                break
            try:
                out.append(self.load(path))
            except DataError:
                continue
        if not out:
            raise DataError("no calibration image could be read: " + "; ".join(self.skipped[:3]))
        return np.ascontiguousarray(np.stack(out), dtype=np.float32)

    def _accumulate(self, batch: np.ndarray) -> None:
        axes = (0, 2, 3)
        s, q = batch.sum(axis=axes, dtype=np.float64), (batch.astype(np.float64) ** 2).sum(axes)
        lo, hi = batch.min(axis=axes), batch.max(axis=axes)
        if self._sum is None:
            self._sum, self._sq, self._min, self._max = s, q, lo, hi
        else:
            self._sum, self._sq = self._sum + s, self._sq + q
            self._min, self._max = np.minimum(self._min, lo), np.maximum(self._max, hi)
        self._count += batch.shape[0] * batch.shape[2] * batch.shape[3]
        self._images += batch.shape[0]

    def stats(self) -> dict[str, Any]:
        """Per input channel: mean, std, min, max of every value fed so far."""
        if self._sum is None:
            return {}
        mean = self._sum / self._count
        std = np.sqrt(np.maximum(self._sq / self._count - mean**2, 0.0))
        return {
            "mean": [round(float(v), 5) for v in mean],
            "std": [round(float(v), 5) for v in std],
            "min": [round(float(v), 5) for v in self._min],
            "max": [round(float(v), 5) for v in self._max],
            "images": self._images,
        }


def channel_stats(batch: np.ndarray) -> dict[str, Any]:
    """The same statistics as ``CalibrationReader.stats`` for one batch (the gate's inputs)."""
    reader = CalibrationReader([], "x", lambda p: np.zeros(0))
    reader._accumulate(np.ascontiguousarray(batch, dtype=np.float32))
    return reader.stats()

"""Each model's parity in one call: draw its sample (plus hardness cases), then compare.

The classifier's sample is scored by Torch first so hardness-bin cases near the
decision boundary are added (and their Torch outputs reused); the detector's
photos are stratified by pill count.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pillsnap.equivalence.batches import iter_batches, prefetch
from pillsnap.equivalence.classification import (
    ClassificationParity,
    compare_classification,
    log_softmax,
)
from pillsnap.equivalence.detection import DetectionParity, compare_detection
from pillsnap.preprocess import PreprocessSpec, load_image, preprocess_one

if TYPE_CHECKING:
    from pillsnap.classmap import ClassMap
    from pillsnap.config import Config
    from pillsnap.equivalence.end_to_end import EndToEndAccumulator
    from pillsnap.equivalence.lanes import Lanes
    from pillsnap.sampling.sample import Sample

log = logging.getLogger(__name__)
EXCLUDED_WHY = "used to calibrate the INT8 model (a gate never evaluates on its calibration images)"


def classification_parity(
    cfg: Config,
    class_map: ClassMap,
    runners: dict[str, Any],
    progress: bool,
    lanes: Lanes,
    exclude: frozenset[Path] = frozenset(),
) -> tuple[Sample, ClassificationParity]:
    from pillsnap.config import require_path
    from pillsnap.sampling.classification import index_classification
    from pillsnap.sampling.draw import sample_dataset
    from pillsnap.sampling.hardness import add_hard_cases, hardness_candidates

    root = require_path(
        cfg.paths.classification_data, "paths.classification_data", "the classification dataset"
    )
    index = index_classification(root, class_map).without(exclude, EXCLUDED_WHY)
    sample = sample_dataset(index, cfg.compare, "classification")
    spec = PreprocessSpec.from_config(cfg.classification)
    cache: dict[Path, np.ndarray] = {}
    candidates = hardness_candidates(index, sample, cfg.compare)
    if candidates:
        with lanes.torch_alone():
            scored, logits = _score(
                candidates, spec, runners["torch"], cfg.compare.batch_size, sample, progress
            )
        if scored:
            top1 = np.exp(log_softmax(logits)).max(axis=1)
            added = add_hard_cases(sample, scored, top1, cfg.compare)
            # Torch already ran on these: the comparison reuses the outputs instead of a second forward pass.
            keep = {it.path for it in added}
            cache = {it.path: row for it, row in zip(scored, logits) if it.path in keep}
    log.info(sample.summary())
    names = {c.index: c.name for c in class_map.classes}
    parity = compare_classification(
        sample.items,
        spec,
        runners["torch"],
        runners["onnx"],
        batch_size=cfg.compare.batch_size,
        skipped=sample.skipped,
        torch_cache=cache,
        class_names=names,
        borderline_count=cfg.compare.borderline_log_count,
        progress=progress,
        lanes=lanes,
    )
    _count_compared_per_bin(
        sample, parity.rows["torch_top1_prob"].to_numpy(), cfg.compare.hardness_bins
    )
    return sample, parity


def _count_compared_per_bin(sample: Sample, top1: np.ndarray, edges: list[float]) -> None:
    """How many of the compared samples fall in each Torch-confidence bin (hard cases included)."""
    from pillsnap.sampling.hardness import bin_label

    for b, (lo, hi) in enumerate(itertools.pairwise(edges)):
        last = b == len(edges) - 2
        label = bin_label(lo, hi, last)
        inside = int(((top1 >= lo) & ((top1 <= hi) if last else (top1 < hi))).sum())
        sample.hardness.setdefault(label, {"candidates": 0, "added": 0})["compared"] = inside


def _score(
    candidates: list,
    spec: PreprocessSpec,
    runner: Any,
    batch_size: int,
    sample: Sample,
    progress: bool,
) -> tuple[list, np.ndarray]:
    """Torch logits of the hardness candidates (unreadable ones skipped and recorded)."""
    from tqdm.auto import tqdm

    items, rows = [], []
    loader = iter_batches(
        candidates, batch_size, lambda it: preprocess_one(load_image(it.path), spec), sample.skipped
    )
    for batch in tqdm(
        prefetch(loader), desc="hardness scoring", unit="batch", disable=not progress
    ):
        rows.append(runner.infer(np.stack(batch.data)))
        items += batch.items
    return items, (np.concatenate(rows) if rows else np.zeros((0, 0), np.float32))


def detection_parity(
    cfg: Config,
    runners: dict[str, Any],
    progress: bool,
    e2e: EndToEndAccumulator | None,
    lanes: Lanes,
    exclude: frozenset[Path] = frozenset(),
) -> tuple[Sample, DetectionParity]:
    from pillsnap.config import require_path
    from pillsnap.sampling.detection import index_detection
    from pillsnap.sampling.draw import sample_dataset

    data = require_path(cfg.paths.detection_data, "paths.detection_data", "the detection data YAML")
    index = index_detection(data).without(exclude, EXCLUDED_WHY)
    sample = sample_dataset(index, cfg.compare, "detection")
    log.info(sample.summary())
    parity = compare_detection(
        sample.items,
        cfg,
        runners["torch"],
        runners["onnx"],
        skipped=sample.skipped,
        progress=progress,
        consumer=e2e,
        lanes=lanes,
    )
    return sample, parity

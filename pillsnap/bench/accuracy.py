"""Accuracy beside the speed, with the equivalence code: what the fastest row costs.

A small fixed subset (stratified and seeded by ``pillsnap.sampling``, the same draw
every run) goes through each configuration and through Torch float32 (run once, its
outputs replayed for every comparison). ``compare_classification`` /
``compare_detection`` give each configuration's top-1 accuracy against the labels and
its top-1 agreement with Torch (classifier), and its mAP@0.5:0.95 and box agreement
with Torch (detector): the figures of ``pillsnap compare``, on fewer images.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pillsnap.config import Config
    from pillsnap.engines.runners import Runner
    from pillsnap.sampling.sample import Sample

log = logging.getLogger(__name__)


class ReplayRunner:
    """Delegates to the reference runner, remembering each batch's output by its bytes.

    Every configuration is compared with the same Torch outputs; Torch runs each batch once.
    """

    def __init__(self, runner: Runner):
        self._runner = runner
        self._seen: dict[tuple[tuple[int, ...], str], np.ndarray] = {}

    def infer(self, batch: np.ndarray) -> np.ndarray:
        key = (batch.shape, hashlib.sha1(np.ascontiguousarray(batch).view(np.uint8)).hexdigest())
        if key not in self._seen:
            self._seen[key] = self._runner.infer(batch)
        return self._seen[key]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runner, name)


@dataclass
class Subsets:
    classification: Sample | None
    detection: Sample | None


def draw_subsets(cfg: Config, tasks: list[str], images: int, photos: int) -> Subsets:
    """The fixed evaluation subsets: ``images`` crops and ``photos`` photos, stratified and seeded."""
    from pillsnap.classmap import ClassMap
    from pillsnap.config import require_path
    from pillsnap.sampling.draw import sample_dataset

    draw = cfg.compare.model_copy(
        update={
            "mode": "smoke",
            "sample_count": max(images, 1),
            "detection_sample_count": max(photos, 1),
            "hard_per_bin": 0,
            "seed": cfg.benchmark.seed,
        }
    )
    cls = det = None
    if "classification" in tasks:
        from pillsnap.sampling.classification import index_classification

        root = require_path(
            cfg.paths.classification_data, "paths.classification_data", "the classification data"
        )
        index = index_classification(root, ClassMap.load(cfg.paths.class_map_path))
        cls = sample_dataset(index, draw, "classification")
    if "detection" in tasks:
        from pillsnap.sampling.detection import index_detection

        data = require_path(cfg.paths.detection_data, "paths.detection_data", "the detection data")
        det = sample_dataset(index_detection(data), draw, "detection")
    return Subsets(cls, det)


def classification_accuracy(
    cfg: Config, sample: Sample, reference: ReplayRunner, runner: Any
) -> dict[str, Any]:
    """Top-1 against the labels, top-1 agreement with Torch float32, on ``sample``."""
    from pillsnap.equivalence.classification import compare_classification
    from pillsnap.preprocess import PreprocessSpec

    parity = compare_classification(
        sample.items,
        PreprocessSpec.from_config(cfg.classification),
        reference,  # type: ignore[arg-type]
        runner,
        batch_size=cfg.compare.batch_size,
        skipped=list(sample.skipped),
        borderline_count=0,
        progress=False,
    )
    rows = parity.rows
    return {
        "metric": "top1",
        "value": float((rows["onnx_top1"] == rows["true_class"]).mean()),
        "reference_value": float((rows["torch_top1"] == rows["true_class"]).mean()),
        "agreement_metric": "top1_agreement",
        "agreement": float(parity.metrics["top1_match_rate"]),
        "images": len(rows),
    }


def detection_accuracy(
    cfg: Config, sample: Sample, reference: ReplayRunner, runner: Any
) -> dict[str, Any]:
    """mAP@0.5:0.95 against the labels, and the share of deployed boxes matching Torch's."""
    from pillsnap.equivalence.detection import compare_detection

    parity = compare_detection(
        sample.items,
        cfg,
        reference,  # type: ignore[arg-type]
        runner,
        skipped=list(sample.skipped),
        progress=False,
    )
    m = parity.metrics
    return {
        "metric": "map50_95",
        "value": float(m["map50_95_onnx"]),
        "reference_value": float(m["map50_95_torch"]),
        "agreement_metric": "box_agreement",
        "agreement": float(1.0 - m["unmatched_rate"]),
        "images": int(m["photos"]),
    }


def measure_accuracy(
    cfg: Config, task: str, sample: Sample, reference: ReplayRunner, runner: Any
) -> dict[str, Any]:
    fn = classification_accuracy if task == "classification" else detection_accuracy
    result = fn(cfg, sample, reference, runner)
    log.info(
        "%s %s: %s %.4f (Torch fp32 %.4f), %s %.4f on %d images",
        getattr(runner, "name", "?"),
        task,
        result["metric"],
        result["value"],
        result["reference_value"],
        result["agreement_metric"],
        result["agreement"],
        result["images"],
    )
    return result

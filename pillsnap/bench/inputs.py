"""What the configurations are fed: real validation data, prepared once, the same for all.

Model-only batches are real preprocessed crops (classifier) and letterboxed photos
(detector) spread over the fixed accuracy subset, not random tensors: activations of
random inputs differ (denormals, saturation), and so can the speed of some kernels.
Without validation data (a machine holding only the release) the batches are seeded
random tensors, and the record says so; accuracy and pipeline rows are then skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from pillsnap.exceptions import DataError, MissingPathError

if TYPE_CHECKING:
    from pillsnap.config import Config
    from pillsnap.sampling.sample import Sample

log = logging.getLogger(__name__)


@dataclass
class Inputs:
    batches: dict[str, dict[int, np.ndarray]]
    """task -> batch size -> float32 ``[N,3,H,W]``."""
    samples: dict[str, Sample] = field(default_factory=dict)
    """The fixed accuracy subsets (absent: no data, or accuracy off)."""
    photos: list[bytes] = field(default_factory=list)
    """Encoded val photos for the pipeline rows."""
    accuracy_on: dict[str, bool] = field(default_factory=dict)

    def accuracy_sample(self, task: str) -> Sample | None:
        return self.samples.get(task) if self.accuracy_on.get(task) else None


def _spread(n: int, k: int) -> np.ndarray:
    return np.linspace(0, max(n - 1, 0), k).round().astype(int) if n else np.zeros(k, int)


def prepare_inputs(cfg: Config, tasks: list[str], notes: list[str]) -> Inputs:
    """Subsets, batches and photos for ``tasks`` (see the module doc)."""
    from pillsnap.bench.accuracy import draw_subsets
    from pillsnap.preprocess import PreprocessSpec, letterbox_batch, load_image, preprocess

    b = cfg.benchmark
    biggest = max(b.batch_sizes)
    inputs = Inputs({t: {} for t in tasks})
    try:
        subsets = draw_subsets(
            cfg, tasks, max(b.accuracy_images, biggest), max(b.accuracy_photos, biggest)
        )
    except (MissingPathError, DataError) as exc:
        notes.append(f"no validation data ({exc}); random inputs, no accuracy, no pipeline rows")
        log.warning("benchmark without validation data: %s", exc)
        subsets = None
    for task in tasks:
        sample = getattr(subsets, task, None) if subsets is not None else None
        if sample is not None:
            inputs.samples[task] = sample
            amount = b.accuracy_images if task == "classification" else b.accuracy_photos
            inputs.accuracy_on[task] = amount > 0
            paths = [sample.items[i].path for i in _spread(len(sample.items), biggest)]
            if task == "classification":
                full = preprocess(paths, PreprocessSpec.from_config(cfg.classification))
            else:
                full, _ = letterbox_batch([load_image(p) for p in paths], cfg.detection.imgsz)
        else:
            size = cfg.classification.crop_size if task == "classification" else cfg.detection.imgsz
            rng = np.random.default_rng(cfg.benchmark.seed)
            full = rng.random((biggest, 3, size, size), dtype=np.float32)
        for batch in b.batch_sizes:
            inputs.batches[task][batch] = np.ascontiguousarray(full[:batch])
    if subsets is not None and len(tasks) == 2 and b.pipeline_photos:
        inputs.photos = pipeline_photos(cfg, b.pipeline_photos)
    return inputs


def pipeline_photos(cfg: Config, count: int) -> list[bytes]:
    """``count`` val photos (stratified by pill count, seeded), as encoded bytes."""
    from pillsnap.config import require_path
    from pillsnap.sampling.detection import index_detection
    from pillsnap.sampling.draw import sample_dataset

    data = require_path(cfg.paths.detection_data, "paths.detection_data", "the detection data")
    draw = cfg.compare.model_copy(
        update={"mode": "smoke", "detection_sample_count": count, "seed": cfg.benchmark.seed + 1}
    )
    sample = sample_dataset(index_detection(data), draw, "detection")
    return [item.path.read_bytes() for item in sample.items]

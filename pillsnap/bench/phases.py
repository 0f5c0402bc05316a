"""The end-to-end pipeline per photo, split by phase, so model-only speed never hides the rest.

``timed_predict`` is ``Pipeline.predict`` taken apart at its seams, calling the same
functions in the same order (``load_image``, ``letterbox_batch``, the detector runner,
``decode_and_nms``, ``Pipeline.prepare_crops``, ``Pipeline.classify_crops``), with a
clock between them; its predictions are ``Pipeline.predict``'s (a test holds it to that).
Photos are kept as encoded bytes in memory, so decoding is timed and disk reads are not.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from pillsnap.postprocess import decode_and_nms
from pillsnap.preprocess import letterbox_batch, load_image

if TYPE_CHECKING:
    from pillsnap.pipeline import PillPrediction, Pipeline

PHASES = ("decode_letterbox", "detector", "nms", "crops_preprocess", "classifier", "scores")
"""decode + letterbox, detector model, NMS, crops + classifier preprocessing, classifier model,
softmax / top-5 / edi_code mapping."""


class _ModelClock:
    """Adds up the nanoseconds spent inside a runner's ``infer`` (the model half of a phase)."""

    def __init__(self, runner: Any):
        self._runner = runner
        self.ns = 0

    def infer(self, batch: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter_ns()
        out = self._runner.infer(batch)
        self.ns += time.perf_counter_ns() - t0
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runner, name)


def timed_predict(
    pipe: Pipeline, photos: Sequence[bytes], batch_size: int
) -> tuple[list[list[PillPrediction]], dict[str, int]]:
    """``pipe.predict(photos, batch_size)`` plus the nanoseconds of each phase of ``PHASES``."""
    ns = dict.fromkeys(PHASES, 0)
    classifier = _ModelClock(pipe.classifier)
    real = pipe.classifier
    pipe.activate()
    pipe.classifier = classifier  # type: ignore[assignment]
    results: list[list[PillPrediction]] = []
    try:
        for start in range(0, len(photos), batch_size):
            t0 = time.perf_counter_ns()
            images = [load_image(p) for p in photos[start : start + batch_size]]
            batch, infos = letterbox_batch(images, pipe.cfg.detection.imgsz)
            t1 = time.perf_counter_ns()
            raw = pipe.detector.infer(batch)
            t2 = time.perf_counter_ns()
            detections = decode_and_nms(raw, infos, pipe.cfg.postprocess.nms)
            t3 = time.perf_counter_ns()
            prepared = pipe.prepare_crops(images, detections)
            t4 = time.perf_counter_ns()
            before = classifier.ns
            results.extend(pipe.classify_crops(prepared, batch_size))
            t5 = time.perf_counter_ns()
            model = classifier.ns - before
            for phase, dt in zip(
                PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, model, t5 - t4 - model)
            ):
                ns[phase] += dt
    finally:
        pipe.classifier = real
    return results, ns

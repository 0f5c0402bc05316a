"""The pipeline split by phase is Pipeline.predict: same predictions, every phase timed."""

from __future__ import annotations

import time

import pytest
from _demo_release import demo_release

from pillsnap.bench.inputs import pipeline_photos
from pillsnap.bench.phases import PHASES, timed_predict
from pillsnap.pipeline import Pipeline

pytestmark = pytest.mark.slow


def test_timed_predict_is_predict_with_a_clock_per_phase(tmp_path_factory):
    cfg, _ = demo_release(tmp_path_factory)
    photos = pipeline_photos(cfg, 6)
    assert len(photos) == 6 and all(isinstance(p, bytes) for p in photos)
    with Pipeline.from_config(cfg, "torch", batch_size=4) as pipe:
        want = pipe.predict(photos, batch_size=4)
        start = time.perf_counter_ns()
        got, ns = timed_predict(pipe, photos, 4)
        wall = time.perf_counter_ns() - start
        assert pipe.classifier.__class__.__name__ == "TorchRunner"  # the clock was taken off again
    assert [[p.to_dict() for p in photo] for photo in got] == [
        [p.to_dict() for p in photo] for photo in want
    ]
    assert sum(len(p) for p in got) > 0
    assert set(ns) == set(PHASES)
    assert all(
        ns[phase] > 0
        for phase in ("decode_letterbox", "detector", "nms", "crops_preprocess", "classifier")
    )
    assert sum(ns.values()) <= wall and sum(ns.values()) > 0.9 * wall

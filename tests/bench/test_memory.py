"""Sampled peak memory above a baseline sees what a configuration allocates, not the process's past."""

from __future__ import annotations

import time

import numpy as np

from pillsnap.bench.memory import PeakMemory, rss_bytes


def test_peak_above_baseline_sees_a_transient_allocation():
    before = rss_bytes()
    with PeakMemory(interval_s=0.002) as mem:
        block = np.ones(80 << 20, dtype=np.uint8)  # 80 MB, touched
        time.sleep(0.05)
        del block
    figures = mem.figures
    assert figures.rss_baseline_mb * (1 << 20) >= before * 0.5
    assert 60 <= figures.rss_peak_above_baseline_mb < 400
    assert figures.samples >= 5 and figures.gpu_peak_above_baseline_mb is None
    with PeakMemory(interval_s=0.002) as idle:
        time.sleep(0.02)
    assert idle.figures.rss_peak_above_baseline_mb < 20  # the earlier peak is not counted again

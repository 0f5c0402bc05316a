"""Synthetic pill experiment: a seeded photo generator and the fixture models trained on it.

The generated data set stands in for the real (private) pill photos so that the whole
release (export, equivalence, benchmarks) can run end to end on any machine.
Heavy imports (torch, ultralytics, timm) stay inside ``pillsnap.synth.train``.
"""

from __future__ import annotations

from pillsnap.synth.dataset import SynthSummary, generate_dataset

__all__ = ["SynthSummary", "generate_dataset"]

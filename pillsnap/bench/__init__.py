"""The provider benchmark stage: every engine, precision and provider of a release, measured honestly.

``run_benchmark(cfg, release_dir)`` is the one entry point (``benchmark.ipynb``, ``pillsnap
bench``, ``benchmarks/bench_engines.py``); ``bench/schema.py`` defines ``benchmark.json``.
"""

import os
import sys

# libgomp (Torch's OpenMP) spin-waits by default; on a shared or loaded machine its spinning
# threads slowed Torch eager 10-20x and every engine in the same process with it. PASSIVE
# must be set before torch is imported; the fingerprint records whether it was in time.
TORCH_LOADED_BEFORE = "torch" in sys.modules
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pillsnap.bench.run import BenchmarkError, BenchmarkResult, run_benchmark

__all__ = ["TORCH_LOADED_BEFORE", "BenchmarkError", "BenchmarkResult", "run_benchmark"]

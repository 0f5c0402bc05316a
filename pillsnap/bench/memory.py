"""Peak memory of one configuration: resident memory sampled above a baseline, GPU memory.

``ru_maxrss`` is the lifetime peak of the process, useless once a second configuration
has run; instead a thread samples the resident set every ``interval`` seconds while one
configuration is built, run for the first time and warmed up at every batch size, and
keeps the peak above the value at the start. Configurations are built one after the
other and kept alive, so each one's figure is its own (session, weights, arenas); freed
heap is handed back to the OS before each baseline, so one configuration does not run in
pages another freed. A spike shorter than the interval can be missed, and allocator
caches may still hide a little: the figure is a lower bound (``ru_maxrss`` of the whole
process, in the record's environment, is the upper one).
"""

from __future__ import annotations

import ctypes
import gc
import os
import threading
from dataclasses import dataclass
from typing import Any, Self

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
MB = 1 << 20


def rss_bytes() -> int:
    """Resident set size of this process (``/proc/self/statm``, else psutil)."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except OSError:
        import psutil

        return int(psutil.Process().memory_info().rss)


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc ``malloc_trim``) before a baseline is taken.

    Without it, memory a previous configuration freed stays resident and is silently reused
    by the next one, whose figure then reads too low.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the figure is a lower bound, as documented
        pass


def peak_rss_mb() -> float:
    """The process's lifetime peak resident set (``ru_maxrss``): an upper bound for any one part."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _gpu_used_bytes() -> int | None:
    """Device-wide used GPU memory (covers ONNX Runtime's and TensorRT's allocations too)."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        free, total = torch.cuda.mem_get_info()
        return int(total - free)
    except Exception:  # noqa: BLE001 - no CUDA runtime, driver errors: no GPU figure, not a failed benchmark
        return None


@dataclass
class MemoryFigures:
    rss_baseline_mb: float
    rss_peak_above_baseline_mb: float
    samples: int
    interval_ms: float
    gpu_peak_above_baseline_mb: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


class PeakMemory:
    """Context manager: sample RSS (and GPU memory) until exit; ``figures`` afterwards."""

    def __init__(self, interval_s: float = 0.005, gpu: bool = False):
        self.interval = interval_s
        self.gpu = gpu
        self._stop = threading.Event()
        self.base = self.peak = 0
        self.gpu_base: int | None = None
        self.gpu_peak: int | None = None
        self.samples = 0

    def _sample(self) -> None:
        self.peak = max(self.peak, rss_bytes())
        if self.gpu_base is not None:
            used = _gpu_used_bytes()
            if used is not None:
                self.gpu_peak = max(self.gpu_peak or 0, used)
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> Self:
        gc.collect()
        release_free_memory()
        self.base = self.peak = rss_bytes()
        if self.gpu:
            self.gpu_base = _gpu_used_bytes()
            self.gpu_peak = self.gpu_base
        self._thread = threading.Thread(target=self._run, name="pillsnap-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def figures(self) -> MemoryFigures:
        gpu = (
            (self.gpu_peak - self.gpu_base) / MB
            if self.gpu_base is not None and self.gpu_peak is not None
            else None
        )
        return MemoryFigures(
            self.base / MB,
            max(self.peak - self.base, 0) / MB,
            self.samples,
            self.interval * 1e3,
            gpu,
        )

"""Torch and ONNX Runtime side by side on the CPU, each engine on its own share of the cores.

Both engines must see every sample, so a comparison costs at least their two compute
times. One after the other, each engine gets every core but uses the second one
poorly on a small CPU: Torch dispatches small ops one by one from Python while its
other OpenMP thread waits, and the waiting threads of both engines spin, so no core
is ever free for decoding photos either. Measured on the 2-core CPU with the fixture
models (batch 16), two threads instead of one speed up the Torch classifier 1.25x,
the ONNX Runtime classifier 1.3x, the Torch detector 1.57x.

So where both engines run on the CPU: ONNX Runtime runs on ``cores // 2`` threads in
a lane thread (its ``run`` releases the GIL), Torch on the other cores in the calling
thread, at the same time (``Lanes.both``), and Torch alone takes every core for the
work it parallelises best (``Lanes.torch_alone``: the detector's large convolutions,
the hardness scoring); decoding and post-processing fill what the lighter lane leaves.
On a GPU, with ``compare.parallel_engines: false`` or with one core, the engines take
turns as before and Torch keeps its threads. Results do not depend on it beyond the
float summation order inside Torch's kernels (around 1e-7, far below every gate).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from pillsnap.config import Config

log = logging.getLogger(__name__)
T = TypeVar("T")
U = TypeVar("U")


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@dataclass
class Lanes:
    """Runs a Torch call and an ONNX Runtime call on the same data, side by side or in turn."""

    parallel: bool
    torch_threads: int
    onnx_threads: int
    all_threads: int
    _lane: ThreadPoolExecutor | None = field(default=None, repr=False)

    @classmethod
    def in_turn(cls) -> Lanes:
        """No lanes: the engines take turns with the threads they already have."""
        return cls(False, 0, 0, 0)

    def both(self, torch_call: Callable[[], T], onnx_call: Callable[[], U]) -> tuple[T, U]:
        """``(torch_call(), onnx_call())``, the ONNX call on the lane thread when parallel."""
        if self._lane is None:
            return torch_call(), onnx_call()
        pending = self._lane.submit(onnx_call)
        try:
            torch_out = torch_call()
        except BaseException:
            pending.cancel()
            raise
        return torch_out, pending.result()

    @contextmanager
    def torch_alone(self) -> Iterator[None]:
        """Torch with every core for a Torch-only step (the hardness scoring)."""
        if not self.parallel:
            yield
            return
        import torch

        torch.set_num_threads(self.all_threads)
        try:
            yield
        finally:
            torch.set_num_threads(self.torch_threads)

    def describe(self) -> dict[str, Any]:
        return {
            "engines": "side by side" if self.parallel else "in turn",
            "torch_threads": self.torch_threads or "unchanged",
            "onnxruntime_threads": self.onnx_threads or "auto",
        }


def plan_lanes(cfg: Config) -> Lanes:
    """Side by side when both engines will run on the CPU and there are two cores or more."""
    import torch

    from pillsnap.engines.providers import select_onnx_providers
    from pillsnap.environment import resolve_torch_device

    cores = available_cores()
    threads = torch.get_num_threads()
    ort_gpu = select_onnx_providers(cfg.runtime)[0][0] != "CPUExecutionProvider"
    on_cpu = resolve_torch_device(cfg.runtime.torch_device) == "cpu" and not ort_gpu
    if not (cfg.compare.parallel_engines and on_cpu and cores >= 2):
        return Lanes(False, threads, cfg.runtime.intra_op_threads, threads)
    onnx_threads = cfg.runtime.intra_op_threads or cores // 2
    return Lanes(True, max(1, cores - onnx_threads), onnx_threads, threads)


@contextmanager
def open_lanes(lanes: Lanes) -> Iterator[Lanes]:
    """Apply the plan: Torch's thread count and the lane thread, both undone on exit."""
    if not lanes.parallel:
        yield lanes
        return
    import torch

    torch.set_num_threads(lanes.torch_threads)
    log.info(
        "engines side by side: torch %d thread(s), onnxruntime %d thread(s)",
        lanes.torch_threads,
        lanes.onnx_threads,
    )
    try:
        with ThreadPoolExecutor(1, "pillsnap-onnx-lane") as lane:
            lanes._lane = lane
            yield lanes
    finally:
        lanes._lane = None
        torch.set_num_threads(lanes.all_threads)

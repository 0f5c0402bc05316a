"""Torch <-> ONNX equivalence: classification, detection and end-to-end parity, gates, diagnosis.

``run_equivalence`` (in ``run.py``) is the entry point used by ``pillsnap compare``
and the release notebooks; the other modules return data and never print.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pillsnap.equivalence.run import EquivalenceResult, run_equivalence

__all__ = ["EquivalenceResult", "run_equivalence"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from pillsnap.equivalence import run

        return getattr(run, name)
    raise AttributeError(name)

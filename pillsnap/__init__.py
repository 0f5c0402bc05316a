"""PillSnap release tooling: checkpoints -> versioned, verified ONNX releases.

``import pillsnap`` stays light: torch, ultralytics, onnx and onnxruntime are
imported inside the functions that need them.
"""

from __future__ import annotations

import os

__version__ = "0.1.0"


def offline_ultralytics() -> None:
    """Make sure Ultralytics never downloads assets or pip-installs behind our back."""
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "false"
    os.environ.setdefault("YOLO_VERBOSE", "false")
    # Ultralytics sets OMP_NUM_THREADS=1 on import when it is unset, which would pin every
    # Torch path (export, comparison, inference) to one core. Keep the user's value if any.
    os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))


offline_ultralytics()

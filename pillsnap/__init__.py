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


offline_ultralytics()

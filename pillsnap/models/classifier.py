"""timm classifier: build, load checkpoints strictly, export to ONNX.

Checkpoint format written by this project (``save_classification_checkpoint``)::

    {"model": state_dict (float16 or float32), "backbone": str, "num_classes": int,
     "img_size": int, "preprocessing": {...}, "class_map_digest": str, "format": "pillsnap-cls-v1"}

``load_classification_state_dict`` also accepts what training scripts commonly
leave: a raw state dict, ``{"state_dict": ...}``, ``{"model": ...}``,
``{"model_state_dict": ...}``, and keys prefixed ``module.`` (DataParallel/DDP).
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pillsnap.exceptions import CheckpointError, UserInputError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
CHECKPOINT_FORMAT = "pillsnap-cls-v1"
_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "net", "weights")


def build_classification_model(backbone: str, num_classes: int, channels_last: bool = False) -> torch.nn.Module:
    """The one way to build the classifier: ``timm.create_model(pretrained=False)``."""
    import timm
    import torch

    if not timm.is_model(backbone):
        close = difflib.get_close_matches(backbone, timm.list_models(), n=5, cutoff=0.6)
        hint = f"close timm names: {', '.join(close)}" if close else "see `timm.list_models('*efficientnet*')`"
        raise UserInputError(f"unknown backbone {backbone!r} (config key `classification.backbone`); {hint}")
    model = timm.create_model(backbone, pretrained=False, num_classes=num_classes)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def extract_state_dict(obj: Any, path: str | Path = "<checkpoint>") -> dict[str, Any]:
    """Unwrap the common checkpoint layouts into a plain state dict (``module.`` stripped)."""
    import torch

    state = obj
    while isinstance(state, dict) and not _looks_like_state_dict(state):
        key = next((k for k in _WRAPPER_KEYS if k in state), None)
        if key is None:
            raise CheckpointError(
                f"{path}: no state dict found; top-level keys are {sorted(state)[:10]}; "
                f"expected a state dict or one wrapped under {', '.join(_WRAPPER_KEYS)}"
            )
        state = state[key]
    if isinstance(state, torch.nn.Module):
        state = state.state_dict()
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _looks_like_state_dict(d: dict[str, Any]) -> bool:
    import torch

    return bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())


def save_classification_checkpoint(path: str | Path, model: torch.nn.Module, meta: dict[str, Any], half: bool = True) -> Path:
    """Save in this project's format; fp16 halves the file (loading casts back to fp32)."""
    import io

    import torch

    from pillsnap.fileio import atomic_write_bytes

    state = {k: (v.half() if half and v.is_floating_point() else v).clone() for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "model": state, **meta}, buf)
    return atomic_write_bytes(path, buf.getvalue())


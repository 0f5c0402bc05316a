"""What an ONNX file says about itself, for a comparison of files made elsewhere.

The metadata check (``check_metadata``) lives with the other checks of a run's
input in ``pillsnap.preflight`` and is re-exported here for ``run_equivalence``.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING

from pillsnap.preflight.onnx import check_metadata

__all__ = ["check_metadata", "describe_onnx"]

if TYPE_CHECKING:
    from pillsnap.config import Config
    from pillsnap.models.common import ExportResult

log = logging.getLogger(__name__)


def describe_onnx(cfg: Config, task: str, onnx_path: str | Path) -> ExportResult:
    """An ``ExportResult`` read back from an existing ONNX file (for ``--*-onnx PATH`` runs)."""
    from datetime import datetime

    from pillsnap.models import common
    from pillsnap.models.onnx_files import parse_onnx
    from pillsnap.versioning import iso_utc

    path = Path(onnx_path)
    model = parse_onnx(path, f"the {task} ONNX")
    meta = {p.key: p.value for p in model.metadata_props}
    inputs, outputs, dynamic = common.onnx_io(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if common.META_INPUT_SHAPE in meta:
        shape = [int(v) for v in meta[common.META_INPUT_SHAPE].split(",")]
    else:
        shape = list(
            cfg.detection_input_shape if task == "detection" else cfg.classification_input_shape
        )
    params = sum(_numel(t) for t in model.graph.initializer) / 1e6
    arch = meta.get(common.META_ARCH) or (
        cfg.detection.architecture if task == "detection" else cfg.classification.backbone
    )
    nc = int(
        meta.get(common.META_NUM_CLASSES)
        or (cfg.detection.num_classes if task == "detection" else cfg.classification.num_classes)
    )
    exported = meta.get(common.META_EXPORTED_AT) or iso_utc(
        datetime.fromtimestamp(os.path.getmtime(path), UTC)
    )
    return common.ExportResult(
        task=task,
        arch=arch,
        num_classes=nc,
        ckpt_path=str(cfg.checkpoint_path(task)),
        onnx_path=str(path),
        opset=int(opset),
        input_shape=shape,
        dynamic_axes=dynamic,
        input_names=inputs,
        output_names=outputs,
        params_million=round(params, 4),
        metadata=meta,
        exported_at_utc=exported,
        tag=meta.get(common.META_TAG, ""),
    )


def _numel(tensor: object) -> int:
    n = 1
    for d in tensor.dims:  # type: ignore[attr-defined]
        n *= int(d)
    return n

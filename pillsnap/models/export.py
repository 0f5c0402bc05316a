"""Two-stage export: detector and classifier checkpoints -> tagged, checked ONNX files.

``export_models`` is the one call the release notebook makes; the per-model
exporters live with their models (``pillsnap.models.detector`` / ``.classifier``)
and are re-exported here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pillsnap.models.classifier import export_classification_onnx
from pillsnap.models.common import ExportResult
from pillsnap.models.detector import export_detection_onnx

if TYPE_CHECKING:
    from pillsnap.config import Config

__all__ = [
    "ExportResult",
    "export_classification_onnx",
    "export_detection_onnx",
    "export_models",
    "export_onnx",
]
log = logging.getLogger(__name__)


def export_models(
    cfg: Config, out_dir: str | Path, tag: str | None = None
) -> dict[str, ExportResult]:
    """Export both models of ``cfg`` under one version tag.

    Both checkpoints are read (weights-only) and checked against the config before
    anything is exported, so a bad classifier does not leave a lone detector ONNX behind.
    """
    from pillsnap.models.classifier import check_classification_checkpoint
    from pillsnap.models.detector import load_detection_checkpoint
    from pillsnap.names import check_tag
    from pillsnap.versioning import prepare_version_tag

    tag = check_tag(tag or prepare_version_tag())
    det_ckpt = cfg.checkpoint_path("detection")
    cls_ckpt = cfg.checkpoint_path("classification")
    load_detection_checkpoint(det_ckpt)
    check_classification_checkpoint(cfg, cls_ckpt)
    results = {
        "detection": export_detection_onnx(cfg, det_ckpt, out_dir, tag),
        "classification": export_classification_onnx(cfg, cls_ckpt, out_dir, tag),
    }
    for name, res in results.items():
        log.info(
            "exported %s: %s (opset %d, input %s, %.2fM params)",
            name,
            res.onnx_path,
            res.opset,
            res.input_shape,
            res.params_million,
        )
    return results


def export_onnx(
    cfg: Config,
    ckpt_path: str | Path | None,
    out_dir: str | Path,
    task: Literal["detection", "classification"] = "classification",
    tag: str | None = None,
) -> tuple[Path, ExportResult]:
    """Spec E-7 helper: export one model and return ``(onnx_path, result)``.

    ``result`` carries the metadata E-7 asks for (params, opset, input shape).
    """
    exporter = export_detection_onnx if task == "detection" else export_classification_onnx
    result = exporter(cfg, ckpt_path, out_dir, tag)
    return Path(result.onnx_path), result

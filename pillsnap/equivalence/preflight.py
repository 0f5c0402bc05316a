"""Checks before any comparison, and what an ONNX file says about itself.

An ONNX whose embedded metadata (pre-processing, letterbox size, number of
classes) disagrees with the config is refused with ``MetadataMismatchError``
naming both values: comparing it would test a different setup from the one
that will be served.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING

from pillsnap.exceptions import MetadataMismatchError, MissingPathError

if TYPE_CHECKING:
    from pillsnap.config import Config
    from pillsnap.models.common import ExportResult

log = logging.getLogger(__name__)
_FLOAT_LIST_KEYS = ("preprocess.mean", "preprocess.std")


def _same(key: str, found: str, expected: str) -> bool:
    if key in _FLOAT_LIST_KEYS:
        try:
            a = [float(v) for v in found.split(",")]
            b = [float(v) for v in expected.split(",")]
        except ValueError:
            return False
        return len(a) == len(b) and all(abs(x - y) <= 1e-6 * max(1.0, abs(y)) for x, y in zip(a, b))
    return found.strip() == expected.strip()


def check_metadata(cfg: Config, task: str, onnx_path: str | Path) -> list[str]:
    """Raise ``MetadataMismatchError`` if ``onnx_path``'s metadata contradicts ``cfg``.

    Returns notes for the report (e.g. keys the file does not carry, which cannot be verified).
    """
    from pillsnap.engines.runners import expected_metadata
    from pillsnap.models.common import read_onnx_metadata

    path = Path(onnx_path)
    if not path.is_file():
        raise MissingPathError(f"{task} ONNX not found: {path}")
    found = read_onnx_metadata(path)
    expected = expected_metadata(cfg, task)
    bad = [
        f"{k}: the ONNX has {found[k]!r}, the config expects {v!r}"
        for k, v in expected.items()
        if k in found and not _same(k, found[k], v)
    ]
    if bad:
        raise MetadataMismatchError(
            f"refusing to compare {path}: its embedded metadata disagrees with the config ({cfg.source or 'defaults'}):\n  "
            + "\n  ".join(bad)
            + "\nFix: compare with the config the model was exported with, or re-export it with this config."
        )
    missing = sorted(k for k in expected if k not in found)
    if missing:
        log.warning(
            "%s carries no %s metadata; those settings cannot be verified", path, ", ".join(missing)
        )
        return [f"ONNX metadata lacks {', '.join(missing)}: not verified against the config"]
    return []


def describe_onnx(cfg: Config, task: str, onnx_path: str | Path) -> ExportResult:
    """An ``ExportResult`` read back from an existing ONNX file (for ``--*-onnx PATH`` runs)."""
    from datetime import datetime

    import onnx

    from pillsnap.models import common
    from pillsnap.versioning import iso_utc

    path = Path(onnx_path)
    model = onnx.load(str(path))
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

"""Ultralytics YOLO detector: build, load for Torch inference, export to ONNX.

The export goes through Ultralytics' own exporter (``YOLO(ckpt).export``) so the
ONNX graph is the one Ultralytics supports; it outputs the raw pre-NMS head
``[N, 4+nc, anchors]`` (``nms=False``), and NMS runs afterwards in
``pillsnap.postprocess`` for both engines.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from pillsnap.exceptions import CheckpointError, ExportError, UserInputError

if TYPE_CHECKING:
    import torch

    from pillsnap.config import Config
    from pillsnap.models.common import ExportResult

log = logging.getLogger(__name__)


def build_detection_model(architecture: str, num_classes: int) -> torch.nn.Module:
    """A randomly initialised Ultralytics ``DetectionModel`` from its bundled ``<arch>.yaml``.

    Used for test fixtures and the production-size benchmark; nothing is downloaded.
    """
    from ultralytics.nn.tasks import DetectionModel

    name = architecture if architecture.endswith((".yaml", ".yml")) else f"{architecture}.yaml"
    try:
        model = DetectionModel(name, nc=num_classes, verbose=False)
    except (FileNotFoundError, KeyError) as exc:
        raise UserInputError(
            f"unknown detection architecture {architecture!r} (config key `detection.architecture`); "
            f"expected an Ultralytics model yaml name such as yolo11n or yolo11m"
        ) from exc
    model.names = {i: f"class{i}" for i in range(num_classes)}
    return model


def save_detection_checkpoint(path: str | Path, model: torch.nn.Module, imgsz: int) -> Path:
    """Save ``model`` the way Ultralytics' trainer does (fp16 module under ``model``), atomically."""
    import copy
    import io

    import torch
    import ultralytics

    from pillsnap.fileio import atomic_write_bytes
    from pillsnap.versioning import iso_utc

    ckpt = {
        "date": iso_utc(),
        "version": ultralytics.__version__,
        "epoch": -1,
        "best_fitness": None,
        "model": copy.deepcopy(model).half(),
        "ema": None,
        "optimizer": None,
        "train_args": {"task": "detect", "imgsz": imgsz, "model": getattr(model, "yaml_file", "")},
    }
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_detection_model(cfg: Config, ckpt_path: str | Path | None = None) -> torch.nn.Module:
    """The Ultralytics ``DetectionModel`` of a checkpoint: eval, float32, fused.

    Prepared the way Ultralytics' exporter prepares it (``eval().float().fuse()``,
    gradients off), so Torch and the exported ONNX run the same arithmetic. In eval
    mode ``model(x)[0]`` is the raw pre-NMS head ``[N, 4+nc, anchors]``.
    """
    from pillsnap.config import require_path

    path = (
        require_path(Path(ckpt_path), "--model / ckpt_path", "the detection checkpoint")
        if ckpt_path
        else cfg.checkpoint_path("detection")
    )
    from ultralytics.nn.tasks import load_checkpoint

    try:
        model, _ = load_checkpoint(str(path), device="cpu", fuse=False)
    except Exception as exc:  # Ultralytics raises TypeError/AttributeError/RuntimeError alike
        raise CheckpointError(
            f"cannot load {path} as an Ultralytics detection checkpoint: {type(exc).__name__}: {exc}. "
            f"Expected a YOLO .pt written by Ultralytics training (weights/best.pt)."
        ) from exc
    nc = int(getattr(model, "nc", 0) or model.yaml.get("nc", 0))
    if getattr(model, "task", "detect") != "detect":
        raise CheckpointError(
            f"{path} is an Ultralytics {model.task!r} model; expected a detection model"
        )
    if nc != cfg.detection.num_classes:
        raise CheckpointError(
            f"{path}: the detector has {nc} class(es), the config expects {cfg.detection.num_classes}; "
            f"set `detection.num_classes={nc}` or pick the right checkpoint"
        )
    found_arch = Path(str(model.yaml.get("yaml_file", ""))).stem
    if found_arch and found_arch != cfg.detection.architecture:
        log.warning(
            "%s was built from %s, config says detection.architecture=%s",
            path,
            found_arch,
            cfg.detection.architecture,
        )
    for p in model.parameters():
        p.requires_grad = False
    model = model.eval().float().fuse(verbose=False)
    log.info("loaded %s (%s, %d class(es), fused, float32)", path, found_arch or "yolo", nc)
    return model


def export_detection_onnx(
    cfg: Config, ckpt_path: str | Path | None, out_dir: str | Path, tag: str | None = None
) -> ExportResult:
    """Export with Ultralytics' exporter to ``{out_dir}/detection-{tag}.onnx`` (raw head, no NMS).

    Ultralytics writes the ONNX next to the ``.pt`` it loaded, so the checkpoint is
    copied into a temporary folder inside ``out_dir``; the result is checked, tagged
    with metadata, then moved into place with ``os.replace`` (same file system).
    """
    from pillsnap.models import common

    tag = tag or common.new_tag()
    opset = cfg.export.opset
    path_in = Path(ckpt_path) if ckpt_path else cfg.checkpoint_path("detection")
    model = load_detection_model(cfg, path_in)  # validates the checkpoint before exporting
    shape = list(cfg.detection_input_shape)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"detection-{tag}.onnx"
    with tempfile.TemporaryDirectory(prefix=".detection-export-", dir=out_dir) as tmp:
        staged = Path(tmp) / f"detection-{tag}.pt"
        shutil.copy2(path_in, staged)
        produced = _ultralytics_export(staged, cfg, shape, opset)
        onnx_model = common.check_onnx(produced)
        dims = common.onnx_output_dims(onnx_model)
        nc = cfg.detection.num_classes
        if len(dims) != 3 or dims[1] != 4 + nc:
            raise ExportError(
                f"{produced}: output shape {dims}, expected the raw head [N, {4 + nc}, anchors]; "
                f"was the model exported with nms=True or end2end?"
            )
        metadata = common.base_metadata(cfg, "detection", tag, nc, shape)
        metadata[common.META_LETTERBOX_IMGSZ] = str(shape[2])
        metadata[common.META_ARCH] = cfg.detection.architecture
        common.write_onnx_metadata(produced, metadata, onnx_model)
        os.replace(produced, final)
    return common.export_result(
        "detection",
        cfg.detection.architecture,
        nc,
        path_in,
        final,
        opset,
        shape,
        common.count_params(model),
        metadata,
        tag,
        onnx_model,
    )


def _ultralytics_export(staged: Path, cfg: Config, shape: list[int], opset: int) -> Path:
    import warnings

    import torch
    from ultralytics import YOLO

    from pillsnap.models.common import export_error, keep_torch_threads

    try:
        with (
            keep_torch_threads(),
            warnings.catch_warnings(),  # tracer chatter about Python-side shape checks in the head
        ):
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            produced = YOLO(str(staged), task="detect").export(
                format="onnx",
                opset=opset,
                dynamic=cfg.export.dynamic,
                imgsz=shape[2],
                batch=shape[0],
                simplify=cfg.export.simplify,
                nms=False,
                half=False,
                device="cpu",
            )
    except Exception as exc:  # every exporter failure becomes one ExportError with advice
        raise export_error(f"detector {cfg.detection.architecture}", exc, opset) from exc
    if not produced or not Path(produced).exists():
        raise ExportError(f"Ultralytics reported no ONNX file for {staged} (returned {produced!r})")
    return Path(produced)

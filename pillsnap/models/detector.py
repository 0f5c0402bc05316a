"""Ultralytics YOLO detector: build, load for Torch inference, export to ONNX.

Checkpoints are loaded weights-only (``pillsnap.models.safe_load``), never through
Ultralytics' own loader, which unpickles everything. The export goes through
Ultralytics' own ``Exporter`` on that in-memory model, so the ONNX graph is the one
Ultralytics supports; it outputs the raw pre-NMS head ``[N, 4+nc, anchors]``
(``nms=False``), and NMS runs afterwards in ``pillsnap.postprocess`` for both engines.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


def load_detection_checkpoint(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``(model, checkpoint)`` of an Ultralytics detection ``.pt``, without running code from it.

    What ``ultralytics.nn.tasks.load_checkpoint(path, fuse=False)`` returns (float32, eval,
    unfused, ``args`` / ``pt_path`` / ``task`` / ``stride`` set), but its unpickling is
    replaced by ``pillsnap.models.safe_load``: Ultralytics' loader unpickles everything,
    so a crafted checkpoint would run its payload before any check of ours.
    """
    import torch
    from ultralytics.cfg import DEFAULT_CFG_DICT
    from ultralytics.nn.tasks import DetectionModel

    from pillsnap.models.safe_load import (
        CheckpointRefused,
        check_module_tree,
        detector_module_classes,
        safe_load,
    )

    path = Path(path)
    modules = detector_module_classes()
    what = "Ultralytics detection checkpoint"
    ckpt = safe_load(path, modules=modules, ultralytics_data=True, what=what)
    expected = "Expected a YOLO .pt written by Ultralytics training (weights/best.pt)."
    if not isinstance(ckpt, dict):
        raise CheckpointError(
            f"cannot load {path} as an {what}: it holds a {type(ckpt).__name__}, not the dict "
            f"Ultralytics training writes. {expected}"
        )
    model = ckpt.get("ema") or ckpt.get("model")
    if not isinstance(model, DetectionModel):
        found = "nothing" if model is None else type(model).__name__
        keys = ", ".join(sorted(map(str, ckpt))[:8])
        raise CheckpointError(
            f"cannot load {path} as an {what}: its 'model' / 'ema' entry holds {found} "
            f"(top-level keys: {keys}). {expected}"
        )
    if type(model) is not DetectionModel:  # a subclass is another task (segment, pose, ...)
        raise CheckpointError(
            f"{path} is an Ultralytics {type(model).__name__}; expected a detection model"
        )
    if ckpt.get("modelopt"):
        raise CheckpointError(
            f"{path}: quantization-aware (modelopt) checkpoints are not supported"
        )
    check_module_tree(model, modules, path)
    train_args = ckpt.get("train_args") or {}
    if not isinstance(train_args, dict):
        raise CheckpointRefused(
            f"{path}: train_args is a {type(train_args).__name__}, expected a dict"
        )
    model = model.float()  # checkpoints are saved in fp16
    model.args = {**DEFAULT_CFG_DICT, **train_args}  # the merge load_checkpoint does
    model.pt_path = str(path)
    if not hasattr(model, "task"):
        model.task = "detect"
    if not hasattr(model, "stride"):
        model.stride = torch.tensor([32.0])
    model = model.eval()
    for m in model.modules():  # load_checkpoint's "module updates" (inplace=True)
        if hasattr(m, "inplace"):
            m.inplace = True
        elif isinstance(m, torch.nn.Upsample) and not hasattr(m, "recompute_scale_factor"):
            m.recompute_scale_factor = None
    return model, ckpt


def detector_architecture(model: torch.nn.Module) -> str:
    """The model yaml a detector was built from (``yolo11n``), or "" when it does not say."""
    yaml = getattr(model, "yaml", None)
    return Path(str(yaml.get("yaml_file", ""))).stem if isinstance(yaml, dict) else ""


def load_detection_model(
    cfg: Config, ckpt_path: str | Path | None = None, fuse: bool = True
) -> torch.nn.Module:
    """The Ultralytics ``DetectionModel`` of a checkpoint: eval, float32, fused.

    Prepared the way Ultralytics' exporter prepares it (``eval().float().fuse()``,
    gradients off), so Torch and the exported ONNX run the same arithmetic. In eval
    mode ``model(x)[0]`` is the raw pre-NMS head ``[N, 4+nc, anchors]``.
    ``fuse=False`` returns it unfused (what the exporter takes).
    """
    from pillsnap.config import require_path

    path = (
        require_path(Path(ckpt_path), "--model / ckpt_path", "the detection checkpoint")
        if ckpt_path
        else cfg.checkpoint_path("detection")
    )
    model, _ = load_detection_checkpoint(path)
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
    found_arch = detector_architecture(model)
    if found_arch and found_arch != cfg.detection.architecture:
        log.warning(
            "%s was built from %s, config says detection.architecture=%s",
            path,
            found_arch,
            cfg.detection.architecture,
        )
    for p in model.parameters():
        p.requires_grad = False
    if fuse:
        model = model.eval().float().fuse(verbose=False)
    log.info(
        "loaded %s (%s, %d class(es), %sfused, float32)",
        path,
        found_arch or "yolo",
        nc,
        "" if fuse else "un",
    )
    return model


def export_detection_onnx(
    cfg: Config, ckpt_path: str | Path | None, out_dir: str | Path, tag: str | None = None
) -> ExportResult:
    """Export with Ultralytics' exporter to ``{out_dir}/detection-{tag}.onnx`` (raw head, no NMS).

    The model is loaded once, weights-only, and handed to Ultralytics' ``Exporter``
    in memory (what ``YOLO(path).export()`` does after *its* unsafe load). The
    exporter writes next to ``model.pt_path``, so that points into a temporary folder
    inside ``out_dir``; the result is checked, tagged with metadata, then moved into
    place with ``os.replace`` (same file system).
    """
    from pillsnap.models import common
    from pillsnap.names import check_tag

    tag = check_tag(tag or common.new_tag())
    opset = cfg.export.opset
    path_in = Path(ckpt_path) if ckpt_path else cfg.checkpoint_path("detection")
    model = load_detection_model(cfg, path_in, fuse=False)  # validated before exporting
    shape = list(cfg.detection_input_shape)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"detection-{tag}.onnx"
    with tempfile.TemporaryDirectory(prefix=".detection-export-", dir=out_dir) as tmp:
        model.pt_path = str(Path(tmp) / f"detection-{tag}.pt")  # only its folder and name are used
        produced = _ultralytics_export(model, cfg, shape, opset)
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
    params = common.count_params(model.fuse(verbose=False))  # the exporter fused a copy
    return common.export_result(
        "detection",
        cfg.detection.architecture,
        nc,
        path_in,
        final,
        opset,
        shape,
        params,
        metadata,
        tag,
        onnx_model,
    )


def _ultralytics_export(model: torch.nn.Module, cfg: Config, shape: list[int], opset: int) -> Path:
    import warnings

    import torch
    from ultralytics.engine.exporter import Exporter

    from pillsnap.models.common import export_error, keep_torch_threads

    overrides = {
        "task": "detect",
        "mode": "export",
        "format": "onnx",
        "opset": opset,
        "dynamic": cfg.export.dynamic,
        "imgsz": shape[2],
        "batch": shape[0],
        "simplify": cfg.export.simplify,
        "nms": False,
        "half": False,
        "device": "cpu",
        "data": None,
        "verbose": False,
    }
    try:
        with (
            keep_torch_threads(),
            warnings.catch_warnings(),  # tracer chatter about Python-side shape checks in the head
        ):
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            produced = Exporter(overrides=overrides)(model=model)
    except Exception as exc:  # every exporter failure becomes one ExportError with advice
        raise export_error(f"detector {cfg.detection.architecture}", exc, opset) from exc
    if not produced or not Path(produced).exists():
        raise ExportError(
            f"Ultralytics reported no ONNX file for {model.pt_path} (returned {produced!r})"
        )
    return Path(produced)

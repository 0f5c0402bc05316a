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

from pillsnap.exceptions import CheckpointError, ConfigError, ExportError, UserInputError

if TYPE_CHECKING:
    import torch

    from pillsnap.config import Config
    from pillsnap.models.common import ExportResult

log = logging.getLogger(__name__)
CHECKPOINT_FORMAT = "pillsnap-cls-v1"
_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "net", "weights")


def build_classification_model(
    backbone: str, num_classes: int, channels_last: bool = False
) -> torch.nn.Module:
    """The one way to build the classifier: ``timm.create_model(pretrained=False)``."""
    import timm
    import torch

    if not timm.is_model(backbone):
        close = difflib.get_close_matches(backbone, timm.list_models(), n=5, cutoff=0.6)
        hint = (
            f"close timm names: {', '.join(close)}"
            if close
            else "see `timm.list_models('*efficientnet*')`"
        )
        raise UserInputError(
            f"unknown backbone {backbone!r} (config key `classification.backbone`); {hint}"
        )
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
    for prefix in ("module.", "_orig_mod."):  # DataParallel/DDP, torch.compile
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _looks_like_state_dict(d: dict[str, Any]) -> bool:
    import torch

    return bool(d) and all(isinstance(v, torch.Tensor) for v in d.values())


def save_classification_checkpoint(
    path: str | Path, model: torch.nn.Module, meta: dict[str, Any], half: bool = True
) -> Path:
    """Save in this project's format; fp16 halves the file (loading casts back to fp32)."""
    import io

    import torch

    from pillsnap.fileio import atomic_write_bytes

    state = {
        k: (v.half() if half and v.is_floating_point() else v).clone()
        for k, v in model.state_dict().items()
    }
    buf = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "model": state, **meta}, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_classification_model(cfg: Config, ckpt_path: str | Path | None = None) -> torch.nn.Module:
    """The configured timm classifier with the checkpoint's weights: eval, float32, strict.

    ``ckpt_path=None`` uses ``{exp_dir}/checkpoints/{classification.checkpoint}``.
    A checkpoint that does not fit raises ``CheckpointError`` listing missing,
    unexpected and wrong-shape keys and the likely cause, because a lenient load
    would export a model with random layers that only the equivalence check notices.
    """
    path, state, meta = read_classification_checkpoint(cfg, ckpt_path)
    c = cfg.classification
    model = build_classification_model(c.backbone, c.num_classes, c.channels_last)
    _check_fits(model, state, cfg, meta, path)
    dtype = _dtype_of(state)
    model.load_state_dict(
        {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}, strict=True
    )
    log.info(
        "loaded %s (%s, %d classes, checkpoint dtype %s)", path, c.backbone, c.num_classes, dtype
    )
    _warn_on_class_map_change(cfg, meta, path)
    return model.eval().float()


def read_classification_checkpoint(
    cfg: Config, ckpt_path: str | Path | None = None
) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """``(path, state dict, metadata)`` of the classifier checkpoint, read weights-only."""
    from pillsnap.config import require_path

    path = (
        require_path(Path(ckpt_path), "--model / ckpt_path", "the classification checkpoint")
        if ckpt_path
        else cfg.checkpoint_path("classification")
    )
    obj = _torch_load(path)
    state = extract_state_dict(obj, path)
    meta = {k: v for k, v in obj.items() if k not in _WRAPPER_KEYS} if isinstance(obj, dict) else {}
    return path, state, meta


def check_classification_checkpoint(
    cfg: Config, ckpt_path: str | Path | None = None
) -> tuple[Path, dict[str, Any]]:
    """Raise ``CheckpointError`` unless the checkpoint loads strictly into the configured model.

    For the preflight: the model is built on the ``meta`` device (shapes, no weights),
    so the check costs the weights-only read and not a real model build.
    """
    import torch

    path, state, meta = read_classification_checkpoint(cfg, ckpt_path)
    c = cfg.classification
    with torch.device("meta"):
        model = build_classification_model(c.backbone, c.num_classes)
    _check_fits(model, state, cfg, meta, path)
    return path, meta


def _check_fits(
    model: torch.nn.Module, state: dict[str, Any], cfg: Config, meta: dict[str, Any], path: Path
) -> None:
    c = cfg.classification
    problems = diagnose_state_dict(model.state_dict(), state, c.backbone, c.num_classes, meta)
    if problems:
        raise CheckpointError(
            f"{path}: cannot load into timm {c.backbone!r} with {c.num_classes} classes (strict):\n"
            + "\n".join(problems)
        )


def _warn_on_class_map_change(cfg: Config, meta: dict[str, Any], path: Path) -> None:
    """Training records the class map digest; a different map would give every pill a wrong edi_code."""
    trained = meta.get("class_map_digest")
    if isinstance(trained, str) and trained and cfg.paths.class_map_path.exists():
        from pillsnap.classmap import ClassMap

        current = ClassMap.load(cfg.paths.class_map_path).digest()
        if current != trained:
            log.warning(
                "%s was trained with class map digest %s..., but %s has %s...: check paths.class_map",
                path,
                trained[:12],
                cfg.paths.class_map_path,
                current[:12],
            )


def _torch_load(path: Path) -> Any:
    """The checkpoint's contents, loaded without ever running code from the file.

    ``.safetensors`` files hold tensors only; everything else goes through
    ``pillsnap.models.safe_load`` (torch ``weights_only=True`` with an allow-list of
    plain training leftovers, no model classes: a whole pickled ``nn.Module`` is refused
    with the advice to save its ``state_dict()``).
    """
    from pillsnap.models.safe_load import safe_load

    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(
                f"cannot read checkpoint {path}: {exc}; expected a complete safetensors file"
            ) from None
    return safe_load(path, what="classification checkpoint")


def _dtype_of(state: dict[str, Any]) -> str:
    floats = [
        v.dtype for v in state.values() if hasattr(v, "is_floating_point") and v.is_floating_point()
    ]
    return str(floats[0]).replace("torch.", "") if floats else "unknown"


def diagnose_state_dict(
    expected: dict[str, Any],
    found: dict[str, Any],
    backbone: str,
    num_classes: int,
    meta: dict[str, Any] | None = None,
    limit: int = 8,
) -> list[str]:
    """Human-readable reasons why ``found`` does not load strictly into ``expected`` ([] = it fits)."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong = [
        k for k in expected if k in found and tuple(found[k].shape) != tuple(expected[k].shape)
    ]
    if not (missing or unexpected or wrong):
        return []

    def show(keys: list[str]) -> str:
        return ", ".join(keys[:limit]) + (
            f", ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
        )

    lines = []
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {show(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {show(unexpected)}")
    if wrong:
        shapes = [
            f"{k} checkpoint {list(found[k].shape)} vs model {list(expected[k].shape)}"
            for k in wrong
        ]
        lines.append(f"  wrong shape ({len(wrong)}): {show(shapes)}")
    lines.append(
        "likely cause: "
        + _likely_cause(
            expected, found, missing, unexpected, wrong, backbone, num_classes, meta or {}
        )
    )
    return lines


def _likely_cause(
    expected: dict[str, Any],
    found: dict[str, Any],
    missing: list[str],
    unexpected: list[str],
    wrong: list[str],
    backbone: str,
    num_classes: int,
    meta: dict[str, Any],
) -> str:
    for prefix in ("module.", "_orig_mod."):
        if missing and all(prefix + k in found for k in missing):
            return (
                f"some keys carry a `{prefix}` prefix (saved from DataParallel/DDP or torch.compile) "
                f"while others do not; re-save the checkpoint with the prefix stripped from every key"
            )
    head = [
        k
        for k in wrong
        if found[k].ndim >= 1 and expected[k].ndim >= 1 and k.split(".")[0] in _head_names(expected)
    ]
    if head and len(wrong) == len(head) and not missing and not unexpected:
        found_nc = int(found[head[0]].shape[0])
        return (
            f"wrong num_classes: the checkpoint's classifier head has {found_nc} classes, the config expects "
            f"{num_classes}; set `classification.num_classes={found_nc}` (and use the matching class map)"
        )
    ckpt_backbone = meta.get("backbone") if isinstance(meta.get("backbone"), str) else None
    overlap = 1 - len(missing) / max(len(expected), 1)
    said = (
        f"; the checkpoint says it is {ckpt_backbone!r}: set `classification.backbone={ckpt_backbone}`"
        if ckpt_backbone and ckpt_backbone != backbone
        else ""
    )
    return (
        f"wrong backbone: only {overlap:.0%} of {backbone!r}'s keys are in the checkpoint and "
        f"{len(wrong)} layer(s) differ in shape; check `classification.backbone`{said}"
    )


def _head_names(expected: dict[str, Any]) -> set[str]:
    # timm heads: classifier (EfficientNet), head / fc (others); the last Linear-shaped weight is the head.
    last = [k for k in expected if k.endswith(".weight") and getattr(expected[k], "ndim", 0) == 2]
    return {"classifier", "head", "fc"} | ({last[-1].split(".")[0]} if last else set())


def export_classification_onnx(
    cfg: Config, ckpt_path: str | Path | None, out_dir: str | Path, tag: str | None = None
) -> ExportResult:
    """Export the classifier to ``{out_dir}/classification-{tag}.onnx`` (input ``input``, output ``logits``).

    Uses the TorchScript-based exporter (``dynamo=False``). Checked with torch 2.14:
    it honours opset 17 and ``dynamic_axes`` and gives a graph that passes the
    checker and matches eager to ~1e-8. The dynamo exporter needs ``onnxscript``
    (not a dependency of this project, absent here) and targets opset 18+, which
    would silently break the opset-17 default the spec asks for.
    """
    import warnings

    import torch

    from pillsnap.models import common
    from pillsnap.names import check_tag
    from pillsnap.preprocess import PreprocessSpec

    tag = check_tag(tag or common.new_tag())
    opset = cfg.export.opset
    path_in = Path(ckpt_path) if ckpt_path else cfg.checkpoint_path("classification")
    model = load_classification_model(cfg, path_in)
    shape = list(cfg.classification_input_shape)
    spec = PreprocessSpec.from_config(cfg.classification)
    if shape[2:] != [spec.crop, spec.crop]:
        raise ConfigError(
            f"export.classification_input_shape {shape} disagrees with the preprocessing crop "
            f"{spec.crop} (classification.preprocessing.crop / img_size); set them to the same size"
        )
    dynamic = {"input": {0: "batch"}, "logits": {0: "batch"}} if cfg.export.dynamic else None
    final = Path(out_dir) / f"classification-{tag}.onnx"
    with common.staged_file(final) as tmp:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning, UserWarning))
                torch.onnx.export(
                    model,
                    (torch.zeros(shape),),
                    str(tmp),
                    input_names=["input"],
                    output_names=["logits"],
                    opset_version=opset,
                    dynamic_axes=dynamic,
                    do_constant_folding=cfg.export.do_constant_folding,
                    dynamo=False,
                )
        except Exception as exc:  # every exporter failure becomes one ExportError with advice
            raise common.export_error(
                f"classifier {cfg.classification.backbone}", exc, opset
            ) from exc
        onnx_model = common.check_onnx(tmp)
        dims = common.onnx_output_dims(onnx_model)
        if dims[-1] != cfg.classification.num_classes:
            raise ExportError(
                f"exported logits have shape {dims}, expected [N, {cfg.classification.num_classes}]"
            )
        metadata = common.base_metadata(
            cfg, "classification", tag, cfg.classification.num_classes, shape
        )
        metadata.update(spec.to_metadata())
        metadata[common.META_ARCH] = cfg.classification.backbone
        common.write_onnx_metadata(tmp, metadata, onnx_model)
    return common.export_result(
        "classification",
        cfg.classification.backbone,
        cfg.classification.num_classes,
        path_in,
        final,
        opset,
        shape,
        common.count_params(model),
        metadata,
        tag,
        onnx_model,
    )

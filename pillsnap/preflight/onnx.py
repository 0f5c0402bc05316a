"""ONNX files handed to a run: readable, their task's inputs and outputs, metadata that fits.

An ONNX whose embedded metadata (pre-processing, letterbox size, number of classes,
class-map digest) disagrees with the config is refused with ``MetadataMismatchError``
naming both values: comparing or serving it would test a different setup from the
one that will be deployed. A file without metadata is still checked by its graph:
a classifier's output must be ``[N, num_classes]``, a detector's ``[N, 4 + nc, anchors]``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from pillsnap.exceptions import MetadataMismatchError, MissingPathError, UserInputError

if TYPE_CHECKING:
    import onnx

    from pillsnap.config import Config

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


def _dims(value: onnx.ValueInfoProto) -> list[int | str]:
    shape = value.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in shape.dim]


def check_onnx_file(
    cfg: Config, task: str, path: str | Path, key: str, class_map_digest: str | None = None
) -> str:
    """One line saying what was checked; ``UserInputError`` naming the problem and ``key``.

    Parses the file (external data vetted, never loaded), checks the input is
    ``[N, 3, H, W]`` and the output is the task's, then the metadata against the
    config and, when given, the class-map digest the export pinned.
    """
    from pillsnap.models.common import META_CLASS_MAP_DIGEST
    from pillsnap.models.onnx_files import parse_onnx

    path = Path(path)
    model = parse_onnx(path, f"the {task} ONNX", key)
    src = f"{path} (from {key})"
    ins, outs = list(model.graph.input), list(model.graph.output)
    initializers = {i.name for i in model.graph.initializer}
    feeds = [i for i in ins if i.name not in initializers]
    if len(feeds) != 1 or len(_dims(feeds[0])) != 4 or _dims(feeds[0])[1] not in (3, "?"):
        shapes = ", ".join(f"{i.name} {_dims(i)}" for i in feeds) or "none"
        raise UserInputError(
            f"{src} is not a {task} model for this project: expected one image input "
            f"[N, 3, H, W], found {shapes}. Pass the {task} ONNX of a release."
        )
    out = _dims(outs[0])
    if task == "classification":
        nc, key_nc = cfg.classification.num_classes, "classification.num_classes"
        ok = len(out) == 2 and (out[1] == nc or isinstance(out[1], str))
        want = f"[N, {nc}] (N images x {key_nc})"
    else:
        nc, key_nc = cfg.detection.num_classes, "detection.num_classes"
        ok = len(out) == 3 and (out[1] == 4 + nc or isinstance(out[1], str))
        want = f"[N, {4 + nc}, anchors] (4 box values + {key_nc}={nc}, the raw pre-NMS head)"
    if not ok:
        rank = 2 if task == "classification" else 3
        found = out[1] if len(out) == rank and isinstance(out[1], int) else 0
        found_nc = found if task == "classification" else found - 4
        hint = f"; if the model is right, set `{key_nc}={found_nc}`" if found_nc > 0 else ""
        raise UserInputError(
            f"{src}: output {outs[0].name!r} has shape {out}, the config expects {want}; it is "
            f"another model or was exported for another class count{hint}."
        )
    meta = {p.key: p.value for p in model.metadata_props}
    notes = check_metadata(cfg, task, path)
    pinned = meta.get(META_CLASS_MAP_DIGEST, "")
    if task == "classification" and class_map_digest and pinned and pinned != class_map_digest:
        raise MetadataMismatchError(
            f"{src} was exported with class map digest {pinned[:12]}..., the configured class map "
            f"({cfg.paths.class_map_path}, key `paths.class_map`) has {class_map_digest[:12]}...; "
            "every edi_code would be wrong. Use the class map of that release."
        )
    extra = f"; {notes[0]}" if notes else ""
    return f"{task} ONNX {path}: input {_dims(feeds[0])}, output {out}{extra}"

"""Helpers shared by the two exporters: parameter count, ONNX checks, ONNX metadata.

``metadata_props`` is where a release pins how its model must be fed (preprocessing,
letterbox size, class-map digest); every consumer reads it back through
``read_onnx_metadata`` so the keys are written and read in one place.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pillsnap.exceptions import ExportError

if TYPE_CHECKING:
    import onnx
    import torch

    from pillsnap.config import Config

# Keys this project writes into ONNX metadata_props (Ultralytics' own keys such as
# ``task``/``imgsz``/``names`` are kept as they are, so YOLO() can still load the file).
META_TASK = "pillsnap.task"  # "detection" | "classification"
META_ARCH = "pillsnap.arch"
META_NUM_CLASSES = "pillsnap.num_classes"
META_TAG = "pillsnap.version_tag"
META_OPSET = "pillsnap.opset"
META_INPUT_SHAPE = "pillsnap.input_shape"  # "1,3,384,384"
META_CLASS_MAP_DIGEST = "pillsnap.class_map_digest"  # sha256, "" when no class map exists
META_EXPORTED_AT = "pillsnap.exported_at_utc"
META_VERSION = "pillsnap.version"
META_LETTERBOX_IMGSZ = "letterbox.imgsz"  # detector only: square letterbox side
# INT8 models (the quantization stage) add these; everything above is kept from the float32 model.
META_PRECISION = "pillsnap.precision"  # "int8"; absent on float exports
META_INT8_SOURCE = "pillsnap.int8_source"  # file name of the float32 ONNX it was quantized from
META_INT8_SOURCE_SHA256 = "pillsnap.int8_source_sha256"
META_INT8_RECIPE = "pillsnap.int8_recipe"  # JSON: the recipe, with reduce_range as applied
META_INT8_EXCLUDED = "pillsnap.int8_excluded_nodes"  # JSON: [{"node", "reason"}] kept float
META_INT8_CALIBRATION = "pillsnap.int8_calibration_sha256"  # digest of the calibration file list
META_INT8_CPU_CLASS = "pillsnap.int8_cpu_class"  # environment.cpu_info()["int8_class"] of the gate
META_INT8_CPU_FLAGS = "pillsnap.int8_cpu_flags"  # the CPU's INT8-relevant flags, comma-separated
META_INT8_GATE = "pillsnap.int8_gate"  # passed | failed | not_gated

# "Exporting the operator 'aten::foo' to ONNX opset version 17 is not supported"
_UNSUPPORTED_OP = re.compile(
    r"operator '?([\w:.]+)'? to ONNX opset version (\d+) is not supported", re.IGNORECASE
)


@dataclass
class ExportResult:
    """What one export produced; the release report is built from these fields."""

    task: str
    arch: str
    num_classes: int
    ckpt_path: str
    onnx_path: str
    opset: int
    input_shape: list[int]
    dynamic_axes: dict[str, dict[int, str]]
    input_names: list[str]
    output_names: list[str]
    params_million: float
    metadata: dict[str, str] = field(default_factory=dict)
    exported_at_utc: str = ""
    tag: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def keep_torch_threads() -> Iterator[None]:
    """Undo Ultralytics' ``select_device``, which sets Torch to ``cpu_count - 1`` threads.

    On a 2-core machine that is one thread: everything after an export or a val in the
    same process (the comparison, a notebook's inference) would run at half speed.
    """
    import torch

    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def count_params(model: torch.nn.Module) -> float:
    """Number of parameters in millions (buffers such as BatchNorm statistics excluded)."""
    return sum(p.numel() for p in model.parameters()) / 1e6


def check_onnx(path: str | Path) -> onnx.ModelProto:
    """``onnx.checker`` (full check) plus strict shape inference; raises ``ExportError``.

    Shape inference catches graphs that load but whose declared shapes contradict
    the operators, which ONNX Runtime would otherwise report only at run time.
    """
    import onnx

    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(
            f"{path}: the exported graph fails the ONNX checker: {exc}. "
            f"{unsupported_operator_hint(str(exc))}"
        ) from exc
    return model


def onnx_io(model: onnx.ModelProto) -> tuple[list[str], list[str], dict[str, dict[int, str]]]:
    """Input names, output names and dynamic axes read from the graph itself."""
    dynamic: dict[str, dict[int, str]] = {}
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        axes = {i: d.dim_param for i, d in enumerate(dims) if d.dim_param}
        if axes:
            dynamic[value.name] = axes
    inputs = [i.name for i in model.graph.input]
    return inputs, [o.name for o in model.graph.output], dynamic


def onnx_output_dims(model: onnx.ModelProto, index: int = 0) -> list[int | str]:
    """Declared dims of one output: ints where fixed, the symbolic name where dynamic."""
    dims = model.graph.output[index].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (weights are not loaded, external data vetted)."""
    from pillsnap.models.onnx_files import parse_onnx

    return {p.key: p.value for p in parse_onnx(path).metadata_props}


def write_onnx_metadata(
    path: str | Path, metadata: dict[str, str], model: onnx.ModelProto | None = None
) -> Path:
    """Merge ``metadata`` into the file's ``metadata_props`` (existing keys are replaced).

    The file is rewritten atomically, so a reader never sees a half-written model.
    """
    import onnx

    path = Path(path)
    model = model if model is not None else onnx.load(str(path))
    merged = {p.key: p.value for p in model.metadata_props}
    merged.update({str(k): str(v) for k, v in metadata.items()})
    del model.metadata_props[:]
    for key, value in merged.items():
        model.metadata_props.add(key=key, value=value)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        onnx.save(model, tmp)
        _chmod_default(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def unsupported_operator_hint(message: str) -> str:
    """The E-11 advice for an operator the exporter or checker rejects."""
    match = _UNSUPPORTED_OP.search(message)
    if match:
        op, opset = match.groups()
        return (
            f"Operator {op} is not supported at opset {opset}: keep opset 17 if you can, otherwise "
            f"try `export.opset=18`, and upgrade onnxruntime so that it runs the newer opset."
        )
    return (
        "If an operator is named above, try `export.opset=18` and upgrade onnxruntime; "
        "otherwise check that the model is in eval mode and float32."
    )


def export_error(what: str, exc: BaseException, opset: int) -> ExportError:
    """Wrap an exporter failure into ``ExportError`` naming the operator when there is one."""
    text = f"{type(exc).__name__}: {exc}"
    match = _UNSUPPORTED_OP.search(text)
    head = f"exporting {what} at opset {opset} failed"
    if match:
        head += f": operator {match.group(1)} is not supported"
    return ExportError(f"{head}. {unsupported_operator_hint(text)}\nCause: {text.strip()[:2000]}")


def new_tag() -> str:
    from pillsnap.versioning import prepare_version_tag

    return prepare_version_tag()


@contextlib.contextmanager
def staged_file(final: Path) -> Iterator[Path]:
    """A temporary path next to ``final``; moved onto it with ``os.replace`` only on success.

    Readers of ``out_dir`` never see a half-written ONNX file, and a failed export
    leaves no file behind.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=".partial.onnx", dir=final.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _chmod_default(tmp)
        os.replace(tmp, final)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _chmod_default(path: str | Path) -> None:
    """mkstemp creates 0600 files; give releases the usual umask-based mode instead."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def base_metadata(
    cfg: Config, task: str, tag: str, num_classes: int, input_shape: list[int]
) -> dict[str, str]:
    """The metadata both exporters write: task, sizes, opset, tag and the class-map digest."""
    from pillsnap import __version__
    from pillsnap.versioning import iso_utc

    digest = ""
    if cfg.paths.class_map_path.exists():
        from pillsnap.classmap import ClassMap

        digest = ClassMap.load(cfg.paths.class_map_path).digest()
    return {
        META_TASK: task,
        META_NUM_CLASSES: str(num_classes),
        META_TAG: tag,
        META_OPSET: str(cfg.export.opset),
        META_INPUT_SHAPE: ",".join(str(d) for d in input_shape),
        META_CLASS_MAP_DIGEST: digest,
        META_EXPORTED_AT: iso_utc(),
        META_VERSION: __version__,
    }


def export_result(
    task: str,
    arch: str,
    num_classes: int,
    ckpt_path: Path,
    onnx_path: Path,
    opset: int,
    input_shape: list[int],
    params_million: float,
    metadata: dict[str, str],
    tag: str,
    model: onnx.ModelProto,
) -> ExportResult:
    """Build the ``ExportResult`` of a finished export; names and dynamic axes come from the graph."""
    inputs, outputs, dynamic = onnx_io(model)
    return ExportResult(
        task=task,
        arch=arch,
        num_classes=num_classes,
        ckpt_path=str(ckpt_path),
        onnx_path=str(onnx_path),
        opset=opset,
        input_shape=list(input_shape),
        dynamic_axes=dynamic,
        input_names=inputs,
        output_names=outputs,
        params_million=round(params_million, 4),
        metadata=dict(metadata),
        exported_at_utc=metadata.get(META_EXPORTED_AT, ""),
        tag=tag,
    )

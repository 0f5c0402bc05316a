"""Typed, validated configuration (pydantic v2), kept apart from execution.

Load order: a YAML file (argument, else ``$PILLSNAP_CONFIG``, else ``./config.yaml``),
then dotted overrides (``export.opset=18``) from the command line or notebook
parameters. Relative paths inside a config file are relative to that file's
folder; relative paths given as overrides are relative to the working directory.

Every validation failure is collected and raised once as ``ConfigError``:
unknown keys name the nearest valid key, wrong types name key, expected and given.
"""

from __future__ import annotations

import difflib
import itertools
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pillsnap.exceptions import ConfigError, MissingPathError

if TYPE_CHECKING:
    import argparse

CONFIG_ENV = "PILLSNAP_CONFIG"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PathsConfig(_Section):
    exp_dir: Path = Path(".")
    """Experiment folder; checkpoints live in ``{exp_dir}/checkpoints``."""
    detection_data: Path | None = None
    """Ultralytics data YAML of the detection dataset (its ``val`` split is used)."""
    classification_data: Path | None = None
    """Classification dataset root holding ``val/<class>/*`` (and ``train``)."""
    class_map: Path | None = None
    """Class map JSON (index -> edi_code); default ``{exp_dir}/class_map.json``."""
    out_dir: Path = Path("runs")
    """Where releases are written (``runs/<tag>/``)."""

    @property
    def checkpoints_dir(self) -> Path:
        return self.exp_dir / "checkpoints"

    @property
    def class_map_path(self) -> Path:
        return self.class_map if self.class_map is not None else self.exp_dir / "class_map.json"


class PreprocessConfig(_Section):
    """The classifier's validation transform; the single source for every engine."""

    resize: int | None = None
    """Shorter side is resized to this before the center crop; None = crop size."""
    crop: int | None = None
    """Center-crop size; None = ``classification.img_size``."""
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: Literal["nearest", "bilinear", "bicubic"] = "bicubic"
    channel_order: Literal["RGB"] = "RGB"
    crop_padding: float = Field(0.0, ge=0.0, le=1.0)
    """Fraction of the box size added on each side when cropping a detection."""


class DetectionConfig(_Section):
    architecture: str = "yolo11m"
    imgsz: int = Field(640, gt=0, multiple_of=32)
    num_classes: int = Field(1, gt=0)
    checkpoint: str = "detection_best.pt"


class ClassificationConfig(_Section):
    backbone: str = "efficientnetv2_s"
    num_classes: int = Field(5000, gt=1)
    img_size: int = Field(384, gt=0)
    checkpoint: str = "classification_best.pt"
    channels_last: bool = False
    preprocessing: PreprocessConfig = PreprocessConfig()

    @property
    def crop_size(self) -> int:
        return self.preprocessing.crop or self.img_size

    @property
    def resize_size(self) -> int:
        return self.preprocessing.resize or self.crop_size


class ExportConfig(_Section):
    opset: int = Field(17, ge=11, le=23)
    dynamic: bool = True
    do_constant_folding: bool = True
    simplify: bool = True
    classification_input_shape: list[int] | None = None
    """``[N,3,H,W]``; None = ``[1,3,img_size,img_size]``. Setting it sets img_size."""
    detection_input_shape: list[int] | None = None
    """``[N,3,H,W]``; None = ``[1,3,imgsz,imgsz]``. Setting it sets detection.imgsz."""

    @field_validator("classification_input_shape", "detection_input_shape")
    @classmethod
    def _nchw(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (len(v) != 4 or v[1] != 3 or v[2] != v[3] or min(v) <= 0):
            raise ValueError(f"expected [N, 3, S, S] with S > 0, got {v}")
        return v


class GatesConfig(_Section):
    mse_mean: float = 1e-4
    mse_p99: float = 5e-4
    top1_mismatch_rate: float = 0.01
    fp16_mse_mean: float = 5e-4
    fp16_top1_mismatch_rate: float = 0.02
    strict_mse_mean: float = 1e-6
    strict_top1_mismatch_rate: float = 0.001
    map50_delta: float = 0.01
    map50_95_delta: float = 0.01
    iou_diff_p95: float = 0.01
    e2e_agreement_min: float = 0.99
    # Added by the equivalence check (issue 4): the spec's gates alone let a few-per-cent
    # change of the last layer pass (probabilities of a confident model barely move).
    rel_logit_diff_p99: float = 1e-3
    """p99 over samples of max|logit diff| / max|Torch logit| (fp32 exports measure ~1e-7)."""
    fp16_rel_logit_diff_p99: float = 2e-2
    score_diff_p95: float = 1e-3
    """p95 |score difference| of matched deployed boxes (fp32 exports measure ~1e-6)."""
    fp16_score_diff_p95: float = 1e-2
    unmatched_rate: float = 0.02
    """Deployed boxes without a counterpart (threshold-borderline ones excluded) / all boxes."""


class CompareConfig(_Section):
    mode: Literal["smoke", "coverage", "full"] = "smoke"
    sample_count: int = Field(32, gt=0)
    per_class_k: int = Field(1, gt=0)
    min_classes: int = Field(1000, gt=0)
    max_total: int = Field(5000, gt=0)
    hardness_bins: list[float] = [0.0, 0.3, 0.6, 0.85, 1.0]
    hard_per_bin: int = Field(2, ge=0)
    detection_sample_count: int = Field(32, gt=0)
    """Photos compared for detection in smoke mode (coverage/full use all val photos)."""
    batch_size: int = Field(16, gt=0)
    parallel_engines: bool = False
    """On the CPU, run Torch and ONNX Runtime side by side, each on its share of the cores.

    Pays for small models whose Torch forward is bound by Python dispatch (the demo's
    fixture models); slower for production-size models, whose convolutions use every core.
    """
    precision: Literal["fp32", "fp16"] = "fp32"
    seed: int = 0
    borderline_log_count: int = Field(10, ge=0)
    gates: GatesConfig = GatesConfig()

    @field_validator("hardness_bins")
    @classmethod
    def _bins(cls, v: list[float]) -> list[float]:
        if len(v) < 2 or any(b <= a for a, b in itertools.pairwise(v)) or v[0] < 0 or v[-1] > 1:
            raise ValueError(f"expected increasing edges within [0, 1], got {v}")
        return v


class NmsConfig(_Section):
    conf_threshold: float = Field(0.3, ge=0.0, le=1.0)
    iou_threshold: float = Field(0.5, ge=0.0, le=1.0)
    max_detections: int = Field(100, gt=0)
    class_agnostic: bool = False


class PostprocessConfig(_Section):
    nms: NmsConfig = NmsConfig()
    eval_conf_threshold: float = Field(0.001, ge=0.0, le=1.0)
    """Confidence cut used only for mAP evaluation (standard low threshold)."""
    eval_iou_threshold: float = Field(0.7, ge=0.0, le=1.0)
    eval_max_detections: int = Field(300, gt=0)


class TensorRTConfig(_Section):
    fp16: bool = True
    workspace_gb: float = Field(4.0, gt=0)
    engine_cache_path: Path = Path("runs/.trt_cache")
    timing_cache_path: Path = Path("runs/.trt_cache")
    profile_min_batch: int = 1
    profile_opt_batch: int = 8
    profile_max_batch: int = 32


class CudaConfig(_Section):
    device_id: int = 0
    cudnn_conv_use_max_workspace: bool = True
    arena_extend_strategy: Literal["kNextPowerOfTwo", "kSameAsRequested"] = "kNextPowerOfTwo"


class RuntimeConfig(_Section):
    tensorrt_first: bool = False
    """Provider order TensorRT -> CUDA -> CPU instead of CUDA -> CPU."""
    require_provider: bool = False
    """Fail instead of falling back when the first requested provider is unavailable."""
    intra_op_threads: int = Field(0, ge=0)
    inter_op_threads: int = Field(0, ge=0)
    torch_device: str = "auto"
    torch_fp16: bool = False
    cuda: CudaConfig = CudaConfig()
    tensorrt: TensorRTConfig = TensorRTConfig()


class QuantizeConfig(_Section):
    enabled: bool = False
    method: Literal["static_qdq"] = "static_qdq"
    calibration_count: int = Field(128, gt=0)
    per_channel: bool = True


class BenchmarkConfig(_Section):
    enabled: bool = False
    warmup: int = Field(3, ge=0)
    iterations: int = Field(20, gt=0)
    batch_sizes: list[int] = [1, 8]


class ServeConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, gt=0, lt=65536)


class ReleaseConfig(_Section):
    stages: list[str] = ["export", "equivalence"]
    """Notebook stems under ``notebooks/``, executed in order by ``pillsnap release``."""
    notebooks_dir: Path | None = None
    """Where the stage notebooks live; None = the ``notebooks/`` folder of this project."""


class Config(_Section):
    paths: PathsConfig = PathsConfig()
    detection: DetectionConfig = DetectionConfig()
    classification: ClassificationConfig = ClassificationConfig()
    export: ExportConfig = ExportConfig()
    compare: CompareConfig = CompareConfig()
    postprocess: PostprocessConfig = PostprocessConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    quantize: QuantizeConfig = QuantizeConfig()
    benchmark: BenchmarkConfig = BenchmarkConfig()
    serve: ServeConfig = ServeConfig()
    release: ReleaseConfig = ReleaseConfig()
    source: Path | None = Field(None, exclude=True)
    """The file this config was loaded from (not part of the saved snapshot)."""

    @model_validator(mode="after")
    def _input_shapes_follow_sizes(self) -> Config:
        # One source of truth: an explicit export input shape sets the model size.
        cls_shape = self.export.classification_input_shape
        if cls_shape is not None and cls_shape[2] != self.classification.crop_size:
            size, pre = cls_shape[2], self.classification.preprocessing
            if pre.crop is not None:  # keep the resize/crop ratio (timm's crop_pct) of the config
                if pre.resize is not None:
                    object.__setattr__(
                        pre, "resize", max(size, round(pre.resize * size / pre.crop))
                    )
                object.__setattr__(pre, "crop", size)
            object.__setattr__(self.classification, "img_size", size)
        det_shape = self.export.detection_input_shape
        if det_shape is not None and det_shape[2] != self.detection.imgsz:
            if det_shape[2] % 32:
                raise ValueError(
                    f"export.detection_input_shape: size {det_shape[2]} is not a multiple of 32"
                )
            object.__setattr__(self.detection, "imgsz", det_shape[2])
        return self

    # -- derived values ------------------------------------------------------------------------
    @property
    def classification_input_shape(self) -> list[int]:
        return self.export.classification_input_shape or [
            1,
            3,
            self.classification.crop_size,
            self.classification.crop_size,
        ]

    @property
    def detection_input_shape(self) -> list[int]:
        return self.export.detection_input_shape or [
            1,
            3,
            self.detection.imgsz,
            self.detection.imgsz,
        ]

    def checkpoint_path(
        self, task: Literal["detection", "classification"], must_exist: bool = True
    ) -> Path:
        name = self.detection.checkpoint if task == "detection" else self.classification.checkpoint
        path = self.paths.checkpoints_dir / name
        if must_exist:
            require_path(path, f"paths.exp_dir + {task}.checkpoint", f"the {task} checkpoint")
        return path

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready dict of the config as used (saved next to each artifact)."""
        return self.model_dump(mode="json")


def require_path(path: Path | None, key: str, what: str) -> Path:
    """Return ``path`` or raise ``MissingPathError`` naming the path and the config key."""
    if path is None:
        raise MissingPathError(
            f"{what} is not configured: set `{key}` in the config or pass `{key}=PATH` as an override"
        )
    if not Path(path).exists():
        raise MissingPathError(
            f"{what} not found: {path} (from config key `{key}`). Fix the path in the config "
            f"or override it, e.g. `{key.split(' ')[0]}=/path/to/it`."
        )
    return Path(path)


# -- loading ---------------------------------------------------------------------------------

_PATH_KEYS = {("paths", k) for k in PathsConfig.model_fields} | {
    ("runtime", "tensorrt", "engine_cache_path"),
    ("runtime", "tensorrt", "timing_cache_path"),
    ("release", "notebooks_dir"),
}


def default_config_path() -> Path:
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else Path("config.yaml")


def load_config(
    path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None
) -> Config:
    """Load a YAML config, apply dotted overrides, validate everything at once.

    ``path=None`` uses ``$PILLSNAP_CONFIG`` or ``./config.yaml``; when neither exists
    the built-in defaults are used (production sizes, paths relative to the cwd).
    """
    raw: dict[str, Any] = {}
    source: Path | None = None
    explicit = path is not None or CONFIG_ENV in os.environ
    cfg_path = Path(path) if path is not None else default_config_path()
    if cfg_path.exists():
        source = cfg_path.resolve()
        try:
            raw = yaml.safe_load(cfg_path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{cfg_path}: not valid YAML: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(
                f"{cfg_path}: expected a mapping at the top level, got {type(raw).__name__}"
            )
        _resolve_paths(raw, source.parent)
    elif explicit:
        key = "the --config argument" if path is not None else f"${CONFIG_ENV}"
        raise MissingPathError(
            f"config file not found: {cfg_path} (from {key}). Pass an existing YAML file."
        )
    for dotted, value in _parse_overrides(overrides):
        _set_dotted(raw, dotted, value)
    cfg = validate_config(raw)
    object.__setattr__(cfg, "source", source)
    return cfg


def validate_config(raw: dict[str, Any]) -> Config:
    """Validate a raw mapping; every problem is collected into one ``ConfigError``."""
    problems = _unknown_keys(raw, Config, ())
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        problems += [
            _describe_error(err) for err in exc.errors() if err["type"] != "extra_forbidden"
        ]
        raise ConfigError(problems) from None
    if problems:
        raise ConfigError(problems)
    return cfg


def apply_overrides(cfg: Config, overrides: list[str] | dict[str, Any] | None) -> Config:
    """Return a new validated config with dotted overrides applied on top of ``cfg``."""
    raw = cfg.model_dump(mode="python", exclude={"source"})
    for dotted, value in _parse_overrides(overrides):
        _set_dotted(raw, dotted, value)
    new = validate_config(raw)
    object.__setattr__(new, "source", cfg.source)
    return new


def _parse_overrides(overrides: list[str] | dict[str, Any] | None) -> list[tuple[str, Any]]:
    if not overrides:
        return []
    if isinstance(overrides, dict):
        return list(overrides.items())
    parsed = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(
                f"override {item!r} is not of the form key.sub=value (e.g. export.opset=18)"
            )
        key, _, text = item.partition("=")
        value = yaml.safe_load(text) if text.strip() else None
        if _is_path_key(key.strip()) and isinstance(value, str):
            value = str(Path(value).expanduser().resolve())
        parsed.append((key.strip(), value))
    return parsed


def _is_path_key(dotted: str) -> bool:
    return tuple(dotted.split(".")) in _PATH_KEYS


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    node = raw
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {} if child is None else child
            node[part] = child
        node = child
    node[parts[-1]] = value


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    for keys in _PATH_KEYS:
        node: Any = raw
        for k in keys[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(keys[-1]), str):
            p = Path(node[keys[-1]]).expanduser()
            node[keys[-1]] = str(p if p.is_absolute() else (base / p).resolve())


def _unknown_keys(raw: Any, model: type[BaseModel], prefix: tuple[str, ...]) -> list[str]:
    if not isinstance(raw, dict):
        return []
    problems = []
    fields = {k: f for k, f in model.model_fields.items() if k != "source"}
    for key, value in raw.items():
        dotted = ".".join(prefix + (str(key),))
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            valid = ", ".join(sorted(fields))
            hint = (
                f"did you mean `{'.'.join(prefix + (close[0],))}`?"
                if close
                else f"valid keys here: {valid}"
            )
            problems.append(f"unknown key `{dotted}`: {hint}")
            continue
        sub = fields[key].annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            problems += _unknown_keys(value, sub, prefix + (str(key),))
    return problems


def _describe_error(err: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
    given = err.get("input")
    given_txt = f"{given!r} ({type(given).__name__})" if given is not None else "nothing"
    return f"`{loc}`: {err['msg']}; expected {_expected(err)}, got {given_txt}"


def _expected(err: dict[str, Any]) -> str:
    kind = err["type"]
    names = {
        "int_parsing": "an integer",
        "int_type": "an integer",
        "int_from_float": "an integer",
        "float_parsing": "a number",
        "float_type": "a number",
        "bool_parsing": "true or false",
        "bool_type": "true or false",
        "string_type": "a string",
        "list_type": "a list",
        "tuple_type": "a list",
        "literal_error": "one of the listed values",
        "path_type": "a path",
        "dict_type": "a mapping",
        "model_type": "a mapping",
    }
    return names.get(kind, "a valid value")


def add_config_arguments(parser: argparse.ArgumentParser, example: str) -> None:
    """``--config PATH`` and repeatable ``--set KEY=VALUE``, the same in every command."""
    parser.add_argument(
        "--config", type=Path, help="config YAML (default $PILLSNAP_CONFIG or ./config.yaml)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"dotted config override, repeatable (e.g. --set {example})",
    )

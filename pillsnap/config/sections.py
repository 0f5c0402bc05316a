"""The typed sections of the config (pydantic v2): one class per ``config.yaml`` section.

Defaults describe production (YOLO11m at 640, ``efficientnetv2_s`` at 384, 5000
classes); ``examples/synthetic/config.yaml`` overrides them for the demo.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from pillsnap.config.base import Section
from pillsnap.config.bench import BenchmarkConfig
from pillsnap.config.quantize import QuantizeConfig
from pillsnap.config.serve import ServeConfig
from pillsnap.exceptions import MissingPathError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PathsConfig(Section):
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


class PreprocessConfig(Section):
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


class DetectionConfig(Section):
    architecture: str = "yolo11m"
    imgsz: int = Field(640, gt=0, multiple_of=32)
    num_classes: int = Field(1, gt=0)
    checkpoint: str = "detection_best.pt"


class ClassificationConfig(Section):
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


class ExportConfig(Section):
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


class GatesConfig(Section):
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
    # Added by the INT8 stage (issue 11): the ``int8`` profile (``compare.precision: int8``),
    # INT8 against the float32 ONNX of the same release. Fixture measurements: docs in README.
    int8_top1_mismatch_rate: float = 0.01
    """Top-1 disagreement with float32 (agreement >= 99 %)."""
    int8_accuracy_drop: float = 0.005
    """Top-1 accuracy against the labels: float32 minus INT8, at most half a point."""
    int8_mse_mean: float = 1e-3
    int8_mse_p99: float = 1e-2
    int8_kl_mean: float = 0.05
    int8_at_risk_rate: float = 0.1
    """Samples whose probability change could reorder their top two / all samples."""
    int8_class_recall_drop: float = 0.34
    """Worst class's recall drop (classes with >= 3 samples): one collapsed class fails it."""
    int8_map50_delta: float = 0.01
    int8_map50_95_drop: float = 0.02
    """mAP@0.5:0.95 may drop by at most this (INT8 minus float32 >= -0.02)."""
    int8_recall_drop: float = 0.02
    """Recall against the labels at the deployed confidence: float32 minus INT8."""
    int8_iou_diff_p95: float = 0.1
    """p95 of 1 - IoU of matched boxes (fixture INT8: 0.04-0.05, a pixel on a 40 px pill)."""
    int8_score_diff_p95: float = 0.05
    int8_unmatched_rate: float = 0.05
    int8_top_score_log2_ratio: float = 1.0
    """|log2(mean top score INT8 / float32)|: scores not collapsed (same order of magnitude)."""
    int8_e2e_agreement_min: float = 0.98


class CompareConfig(Section):
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
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    """``int8``: INT8 models checked against the float32 ONNX of their release (int8 gates)."""
    seed: int = 0
    borderline_log_count: int = Field(10, ge=0)
    gates: GatesConfig = GatesConfig()
    layer_tolerance: float = Field(1e-3, gt=0)
    """Relative error ||torch - onnx|| / ||torch|| above which a layer counts as divergent.

    Correct fp32 exports of the fixture models measure at most ~4e-6 per layer (5 seeds).
    """
    localise: Literal["on_failure", "always", "never"] = "on_failure"
    """Per-layer localisation of the divergence: when a classification/detection gate fails, always, never."""

    @field_validator("hardness_bins")
    @classmethod
    def _bins(cls, v: list[float]) -> list[float]:
        if len(v) < 2 or any(b <= a for a, b in itertools.pairwise(v)) or v[0] < 0 or v[-1] > 1:
            raise ValueError(f"expected increasing edges within [0, 1], got {v}")
        return v


class NmsConfig(Section):
    conf_threshold: float = Field(0.3, ge=0.0, le=1.0)
    iou_threshold: float = Field(0.5, ge=0.0, le=1.0)
    max_detections: int = Field(100, gt=0)
    class_agnostic: bool = False


class PostprocessConfig(Section):
    nms: NmsConfig = NmsConfig()
    eval_conf_threshold: float = Field(0.001, ge=0.0, le=1.0)
    """Confidence cut used only for mAP evaluation (standard low threshold)."""
    eval_iou_threshold: float = Field(0.7, ge=0.0, le=1.0)
    eval_max_detections: int = Field(300, gt=0)


class TensorRTConfig(Section):
    fp16: bool = True
    workspace_gb: float = Field(4.0, gt=0)
    engine_cache_path: Path = Path("runs/.trt_cache")
    timing_cache_path: Path = Path("runs/.trt_cache")
    profile_min_batch: int = 1
    profile_opt_batch: int = 8
    profile_max_batch: int = 32


class CudaConfig(Section):
    device_id: int = 0
    cudnn_conv_use_max_workspace: bool = True
    arena_extend_strategy: Literal["kNextPowerOfTwo", "kSameAsRequested"] = "kNextPowerOfTwo"


class RuntimeConfig(Section):
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


class ReleaseConfig(Section):
    stages: list[str] = ["export", "equivalence"]
    """Notebook stems under ``notebooks/``, executed in order by ``pillsnap release``."""
    notebooks_dir: Path | None = None
    """Where the stage notebooks live; None = the ``notebooks/`` folder of this project."""


class ImagesConfig(Section):
    """How every image pillsnap opens is read (compare, infer, release, serving)."""

    max_pixels: int = Field(89_478_485, gt=0)
    """Images with more pixels are refused before decoding (skipped with this reason);
    Pillow's default. Raise it for trusted, very large photos."""


class Config(Section):
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
    images: ImagesConfig = ImagesConfig()
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
        folder = self.paths.checkpoints_dir
        path = folder / name
        if must_exist and not path.is_file():
            raise MissingPathError(_missing_checkpoint(task, name, folder, path))
        return path

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready dict of the config as used (saved next to each artifact)."""
        return self.model_dump(mode="json")


def _missing_checkpoint(task: str, name: str, folder: Path, path: Path) -> str:
    """Name the key that is wrong: the folder (``paths.exp_dir``) or the file name."""
    if not folder.is_dir():
        return (
            f"the {task} checkpoint not found: {path}: the folder {folder} does not exist. "
            f"Checkpoints are read from {{paths.exp_dir}}/checkpoints/; fix `paths.exp_dir` "
            f"(now {folder.parent}), e.g. `--set paths.exp_dir=/path/to/experiment`."
        )
    found = sorted(p.name for p in folder.iterdir() if p.is_file())
    listed = ", ".join(found[:8]) + (" ..." if len(found) > 8 else "") if found else "no files"
    what = "is a folder, not a file" if path.is_dir() else "does not exist"
    example = next((f for f in found if f.startswith((task, "best"))), f"{task}_best.pt")
    return (
        f"the {task} checkpoint not found: {path} {what} (config key `{task}.checkpoint` = "
        f"{name!r}, a file name in {folder}, which holds: {listed}). Fix `{task}.checkpoint`, "
        f"e.g. `--set {task}.checkpoint={example}`."
    )


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

"""One runner interface for every engine (Polygraphy style).

``Runner.infer`` validates the batch (float32 ``[N,3,H,W]``), times the call and
returns float32; a subclass only implements ``_activate`` / ``_infer`` /
``_deactivate``. Detector runners return the raw pre-NMS head ``[N, 4+nc, anchors]``,
classifier runners the logits ``[N, num_classes]``. ``create_runner`` is the one
way the pipeline, the CLI and the equivalence check build them.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

import numpy as np

from pillsnap.engines.providers import select_onnx_providers  # noqa: F401 - public API of this module
from pillsnap.environment import resolve_torch_device
from pillsnap.exceptions import MetadataMismatchError, PillsnapError, UserInputError

if TYPE_CHECKING:
    import torch

    from pillsnap.config import Config, RuntimeConfig

log = logging.getLogger(__name__)
ENGINES = ("torch", "onnx", "tensorrt")
_TASKS = {
    "detection": "detection",
    "detect": "detection",
    "classification": "classification",
    "classify": "classification",
}


class Runner(ABC):
    """activate -> infer* -> deactivate; also a context manager."""

    engine = "base"

    def __init__(self, name: str, input_shape: list[int | None] | None = None):
        self.name = name
        self.input_shape = input_shape  # [N,3,H,W]; None entries are dynamic
        self.is_active = False
        self.last_inference_time: float | None = None

    def activate(self) -> Self:
        if not self.is_active:
            self._activate()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            self._deactivate()
            self.is_active = False

    def __enter__(self) -> Self:
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Run one batch; ``last_inference_time`` holds the seconds spent in the engine."""
        if not self.is_active:
            raise PillsnapError(
                f"runner {self.name} is not active: call activate() or use it in a `with` block"
            )
        self._check_input(batch)
        start = time.perf_counter()
        out = self._infer(batch)
        self.last_inference_time = time.perf_counter() - start
        return np.asarray(out, dtype=np.float32)

    def _check_input(self, batch: np.ndarray) -> None:
        if not isinstance(batch, np.ndarray) or batch.dtype != np.float32:
            got = batch.dtype if isinstance(batch, np.ndarray) else type(batch).__name__
            raise UserInputError(
                f"{self.name}: expected a float32 numpy batch, got {got} (use pillsnap.preprocess)"
            )
        expected = self.input_shape or [None, 3, None, None]
        if (
            batch.ndim != 4
            or batch.shape[0] == 0
            or any(e is not None and e != g for e, g in zip(expected[1:], batch.shape[1:]))
        ):
            want = "x".join("?" if e is None else str(e) for e in expected[1:])
            raise UserInputError(
                f"{self.name}: expected a batch [N>0, {want.replace('x', ', ')}], got {list(batch.shape)}"
            )

    def describe(self) -> dict[str, Any]:
        """engine, providers in use, precision, device, model_path (for reports and logs)."""
        return {
            "engine": self.engine,
            "providers": [],
            "precision": "fp32",
            "device": "cpu",
            "model_path": "",
        }

    @abstractmethod
    def _activate(self) -> None: ...

    @abstractmethod
    def _infer(self, batch: np.ndarray) -> np.ndarray: ...

    def _deactivate(self) -> None:
        return None


class TorchRunner(Runner):
    """Eager PyTorch; a tuple output (Ultralytics eval mode) yields its first element."""

    engine = "torch"

    def __init__(
        self,
        module: torch.nn.Module,
        device: str = "cpu",
        fp16: bool = False,
        model_path: str | Path | None = None,
        input_shape: list[int | None] | None = None,
        name: str = "torch",
    ):
        super().__init__(name, input_shape)
        self.module, self.device, self.fp16 = module, resolve_torch_device(device), fp16
        self.model_path = str(model_path or "")

    def _activate(self) -> None:
        self.module = self.module.to(self.device).eval()
        if self.fp16:
            if self.device == "cpu":
                log.warning(
                    "%s: fp16 on CPU is slow and not what serving runs; consider runtime.torch_fp16=false",
                    self.name,
                )
            self.module = self.module.half()

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device)
            out = self.module(x.half() if self.fp16 else x)
            if isinstance(out, (tuple, list)):
                out = out[0]
            return out.float().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        return {
            "engine": "torch",
            "providers": [self.device],
            "precision": "fp16" if self.fp16 else "fp32",
            "device": self.device,
            "model_path": self.model_path,
        }


class OnnxRunner(Runner):
    """ONNX Runtime; ``tensorrt=True`` puts the TensorRT provider first.

    ``expect_metadata`` (key -> value) is compared with the file's ``metadata_props``
    on activation: a classifier exported for another input size or normalisation
    must not be fed silently.
    """

    engine = "onnxruntime"

    def __init__(
        self,
        path: str | Path,
        runtime_cfg: RuntimeConfig | None = None,
        tensorrt: bool = False,
        expect_metadata: dict[str, str] | None = None,
        name: str | None = None,
    ):
        from pillsnap.config import RuntimeConfig

        super().__init__(name or Path(path).name)
        self.path, self.tensorrt = Path(path), tensorrt
        self.runtime_cfg = runtime_cfg or RuntimeConfig()
        self.expect_metadata = expect_metadata or {}
        self.session: Any = None
        self.metadata: dict[str, str] = {}

    def _activate(self) -> None:
        from pillsnap.engines.providers import create_session

        name, shape = (
            self._trt_profile_input()
            if self.tensorrt or self.runtime_cfg.tensorrt_first
            else (None, None)
        )
        self.session = create_session(
            self.path, self.runtime_cfg, self.tensorrt, input_name=name, input_shape=shape
        )
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self._check_metadata()
        inp = self.session.get_inputs()[0]
        self.input_name, self.output_name = inp.name, self.session.get_outputs()[0].name
        self.input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        self.input_shape = [d if isinstance(d, int) else None for d in inp.shape]

    def _trt_profile_input(self) -> tuple[str | None, list[int] | None]:
        import onnx

        from pillsnap.models.common import META_INPUT_SHAPE

        model = onnx.load(str(self.path), load_external_data=False)
        meta = {p.key: p.value for p in model.metadata_props}
        shape = (
            [int(d) for d in meta[META_INPUT_SHAPE].split(",")]
            if META_INPUT_SHAPE in meta
            else None
        )
        return model.graph.input[0].name, shape

    def _check_metadata(self) -> None:
        checked = {k: v for k, v in self.expect_metadata.items() if k in self.metadata}
        bad = [
            f"{k}: file has {self.metadata[k]!r}, config expects {v!r}"
            for k, v in checked.items()
            if self.metadata[k] != v
        ]
        if bad:
            raise MetadataMismatchError(
                f"{self.path} was exported for a different setup:\n  "
                + "\n  ".join(bad)
                + "\nFix: use the config the model was exported with, or re-export it."
            )
        if self.expect_metadata and not checked:
            log.warning(
                "%s has no pillsnap metadata; its preprocessing cannot be verified", self.path
            )

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(
            [self.output_name], {self.input_name: batch.astype(self.input_dtype, copy=False)}
        )[0]

    def _deactivate(self) -> None:
        self.session = None

    def describe(self) -> dict[str, Any]:
        providers = list(self.session.get_providers()) if self.session is not None else []
        gpu = any(p in providers for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider"))
        trt_fp16 = "TensorrtExecutionProvider" in providers and self.runtime_cfg.tensorrt.fp16
        fp16 = trt_fp16 or getattr(self, "input_dtype", np.float32) == np.float16
        return {
            "engine": "onnxruntime",
            "providers": providers,
            "precision": "fp16" if fp16 else "fp32",
            "device": f"cuda:{self.runtime_cfg.cuda.device_id}" if gpu else "cpu",
            "model_path": str(self.path),
        }


def create_runner(
    engine: Literal["torch", "onnx", "tensorrt"],
    task: Literal["detection", "classification"],
    cfg: Config,
    model_path: str | Path | None = None,
) -> Runner:
    """Build (not activate) the runner of one engine for one task.

    ``torch`` loads the checkpoint from the config unless ``model_path`` is given;
    ``onnx`` and ``tensorrt`` need ``model_path`` (an ``.onnx`` file).
    """
    from pillsnap.config import require_path

    if engine not in ENGINES:
        raise UserInputError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    if task not in _TASKS:
        raise UserInputError(f"unknown task {task!r}; expected detection or classification")
    task = _TASKS[task]  # type: ignore[assignment]
    path = (
        require_path(Path(model_path), "--model", f"the {task} model")
        if model_path is not None
        else None
    )
    if engine == "torch":
        if path is not None and path.suffix == ".onnx":
            raise UserInputError(
                f"{path} is an ONNX file; run it with --engine onnx (torch needs a .pt checkpoint)"
            )
        from pillsnap.models.classifier import load_classification_model
        from pillsnap.models.detector import load_detection_model

        load = load_detection_model if task == "detection" else load_classification_model
        module = load(cfg, path)
        path = path or cfg.checkpoint_path(task)
        shape = (
            None
            if task == "detection"
            else [None, 3, cfg.classification.crop_size, cfg.classification.crop_size]
        )
        return TorchRunner(
            module, cfg.runtime.torch_device, cfg.runtime.torch_fp16, path, shape, f"torch-{task}"
        )
    if path is None:
        raise UserInputError(
            f"engine {engine!r} needs the {task} ONNX file: pass --model PATH.onnx"
        )
    if path.suffix != ".onnx":
        raise UserInputError(
            f"{path} is not an .onnx file; export it first or use --engine torch for checkpoints"
        )
    from pillsnap.models.onnx_files import parse_onnx

    parse_onnx(path, f"the {task} ONNX", "--model")  # readable, external data inside its folder
    return OnnxRunner(
        path,
        cfg.runtime,
        tensorrt=engine == "tensorrt",
        expect_metadata=expected_metadata(cfg, task),
        name=f"{engine}-{task}",
    )


def expected_metadata(cfg: Config, task: str) -> dict[str, str]:
    """The ONNX metadata a model must carry to be fed by this config's preprocessing."""
    from pillsnap.models import common
    from pillsnap.preprocess import PreprocessSpec

    if task == "detection":
        return {
            common.META_TASK: "detection",
            common.META_NUM_CLASSES: str(cfg.detection.num_classes),
            common.META_LETTERBOX_IMGSZ: str(cfg.detection.imgsz),
        }
    return {
        common.META_TASK: "classification",
        common.META_NUM_CLASSES: str(cfg.classification.num_classes),
        **PreprocessSpec.from_config(cfg.classification).to_metadata(),
    }


def _infer_once(
    engine: Literal["torch", "onnx", "tensorrt"],
    cfg: Config,
    task: str,
    batch: np.ndarray,
    model_path: str | Path | None,
) -> np.ndarray:
    with create_runner(engine, task, cfg, model_path) as runner:  # type: ignore[arg-type]
        return runner.infer(batch)


def infer_torch(
    cfg: Config, task: str, batch: np.ndarray, model_path: str | Path | None = None
) -> np.ndarray:
    """One-shot Torch inference (spec E-9); keep a runner for repeated calls."""
    return _infer_once("torch", cfg, task, batch, model_path)


def infer_onnx(cfg: Config, task: str, batch: np.ndarray, model_path: str | Path) -> np.ndarray:
    """One-shot ONNX Runtime inference (CUDA -> CPU)."""
    return _infer_once("onnx", cfg, task, batch, model_path)


def infer_tensorrt(cfg: Config, task: str, batch: np.ndarray, model_path: str | Path) -> np.ndarray:
    """One-shot inference with TensorRT first (TensorRT -> CUDA -> CPU, with fallback)."""
    return _infer_once("tensorrt", cfg, task, batch, model_path)

"""A runner per configuration, on the one runner interface (``pillsnap.engines.runners``).

* Torch: ``create_runner("torch", ...)`` with the configuration's device and precision.
* ONNX Runtime: ``BenchOnnxRunner``, an ``OnnxRunner`` whose session gets exactly the
  configuration's providers: a CPU configuration never lands on CUDA, and a GPU one that
  does not start (or silently runs on the CPU) fails with the reason instead of being
  timed as if it were the GPU. Provider options come from the one option builder
  (``engines.providers.select_onnx_providers``), session options from ``session_options``.
* OpenVINO: ``OpenVinoRunner`` compiling the same ONNX file for its CPU plugin with its
  default settings (threads set like every other CPU configuration).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pillsnap.bench.catalogue import CPU, CUDA, TRT, Configuration
from pillsnap.engines.runners import OnnxRunner, Runner, create_runner, expected_metadata
from pillsnap.exceptions import MetadataMismatchError, ProviderError

if TYPE_CHECKING:
    from pillsnap.config import Config, RuntimeConfig

log = logging.getLogger(__name__)


@dataclass
class BuildPlan:
    """What one configuration runs for one model: the file, and the runtime settings."""

    conf: Configuration
    task: str
    model_file: Path
    threads: int
    batch_sizes: list[int]
    work_dir: Path
    """Scratch space outside the release (fp16 conversions, TensorRT caches)."""
    tensorrt_cache: Path | None = None
    ort_spinning: bool = True


def runtime_for(cfg: Config, plan: BuildPlan) -> RuntimeConfig:
    """The config's runtime section with the benchmark's threads and a strict provider choice."""
    rt = cfg.runtime.model_copy(deep=True)
    rt.intra_op_threads = plan.threads
    rt.require_provider = True
    if plan.conf.engine == "tensorrt":
        rt.tensorrt_first = True
        rt.tensorrt.fp16 = True
        rt.tensorrt.profile_max_batch = max(rt.tensorrt.profile_max_batch, *plan.batch_sizes)
        rt.tensorrt.profile_min_batch = min(rt.tensorrt.profile_min_batch, *plan.batch_sizes)
        if plan.tensorrt_cache is not None:
            rt.tensorrt.engine_cache_path = plan.tensorrt_cache
            rt.tensorrt.timing_cache_path = plan.tensorrt_cache
    else:
        rt.tensorrt_first = False
    return rt


def provider_list(
    conf: Configuration,
    rt: RuntimeConfig,
    input_name: str | None = None,
    input_shape: list[int] | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """The providers (with options) one ONNX Runtime configuration asks for, best first.

    Raises ``ProviderError`` when the configuration's provider is not in this onnxruntime.
    """
    from pillsnap.engines.providers import select_onnx_providers

    if conf.device == "cpu":
        return [(CPU, {})]
    chosen = select_onnx_providers(
        rt, conf.engine == "tensorrt", input_name=input_name, input_shape=input_shape
    )
    wanted = [TRT, CUDA, CPU] if conf.engine == "tensorrt" else [CUDA, CPU]
    out = [(name, dict(opts)) for name, opts in chosen if name in wanted]
    if conf.engine == "tensorrt":
        for name, opts in out:
            if name == TRT:
                opts["trt_fp16_enable"] = "True"
                opts["trt_int8_enable"] = str(conf.precision == "int8")
    return out


class BenchOnnxRunner(OnnxRunner):
    """An ``OnnxRunner`` on exactly one configuration's providers; fails rather than falls back."""

    def __init__(
        self,
        path: str | Path,
        rt: RuntimeConfig,
        conf: Configuration,
        expect: dict[str, str],
        spinning: bool = True,
    ):
        super().__init__(path, rt, conf.engine == "tensorrt", expect, name=f"{conf.name}")
        self.conf, self.spinning = conf, spinning

    def _activate(self) -> None:
        import onnxruntime as ort

        from pillsnap.engines.providers import session_options

        name, shape = self._trt_profile_input() if self.conf.engine == "tensorrt" else (None, None)
        providers = provider_list(self.conf, self.runtime_cfg, name, shape)
        for _, opts in providers:
            for key in ("trt_engine_cache_path", "trt_timing_cache_path"):
                if key in opts:
                    Path(opts[key]).mkdir(parents=True, exist_ok=True)
        options = session_options(self.runtime_cfg)
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if self.spinning else "0"
        )
        session = ort.InferenceSession(
            str(self.path),
            sess_options=options,
            providers=providers,
            enable_fallback=0,
        )
        in_use = list(session.get_providers())
        if providers[0][0] not in in_use:
            raise ProviderError(
                f"{providers[0][0]} was requested but the session runs on {in_use} "
                "(silent fallback: not timed)"
            )
        self.session = session
        self.metadata = dict(session.get_modelmeta().custom_metadata_map)
        self._check_metadata()
        inp = session.get_inputs()[0]
        self.input_name, self.output_name = inp.name, session.get_outputs()[0].name
        self.input_dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        self.input_shape = [d if isinstance(d, int) else None for d in inp.shape]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "precision": self.conf.precision}


class OpenVinoRunner(Runner):
    """OpenVINO's CPU plugin on an ONNX file, compiled with its defaults (threads from the config).

    The output buffer belongs to the infer request and is overwritten by the next call, so
    it is copied (ONNX Runtime returns a fresh array too).
    """

    engine = "openvino"

    def __init__(
        self,
        path: str | Path,
        threads: int,
        expect: dict[str, str],
        name: str,
        precision: str | None = None,
    ):
        super().__init__(name)
        self.path, self.threads, self.expect = Path(path), threads, expect
        self.precision = precision
        """``INFERENCE_PRECISION_HINT`` (``f32``); None keeps OpenVINO's default for this CPU."""
        self.compiled: Any = None
        self.request: Any = None
        self.execution_precision = ""

    def _activate(self) -> None:
        import openvino as ov

        from pillsnap.models.common import read_onnx_metadata

        meta = read_onnx_metadata(self.path)
        bad = [
            f"{k}: file has {meta[k]!r}, config expects {v!r}"
            for k, v in self.expect.items()
            if k in meta and meta[k] != v
        ]
        if bad:
            raise MetadataMismatchError(f"{self.path} was exported for another setup: {bad}")
        props: dict[str, Any] = {"INFERENCE_NUM_THREADS": self.threads} if self.threads else {}
        if self.precision:
            props["INFERENCE_PRECISION_HINT"] = self.precision
        self.compiled = ov.Core().compile_model(str(self.path), "CPU", props)
        self.request = self.compiled.create_infer_request()
        precision = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.execution_precision = getattr(precision, "get_type_name", lambda: str(precision))()
        dims = self.compiled.input(0).partial_shape
        self.input_shape = [d.get_length() if d.is_static else None for d in dims]

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        self.request.infer({0: batch}, share_inputs=True)
        return self.request.get_output_tensor(0).data.copy()

    def _deactivate(self) -> None:
        self.request = self.compiled = None

    def describe(self) -> dict[str, Any]:
        return {
            "engine": "openvino",
            "providers": [f"openvino:CPU ({self.execution_precision or '?'})"],
            "precision": self.execution_precision or "default",
            "device": "cpu",
            "model_path": str(self.path),
        }


def convert_fp16(src: str | Path, dst: Path) -> Path:
    """The float32 ONNX as float16 weights and compute, float32 inputs/outputs (for ORT CUDA fp16)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    src = Path(src)
    if dst.is_file() and dst.stat().st_mtime >= src.stat().st_mtime:
        return dst
    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dst))
    return dst


def make_runner(cfg: Config, plan: BuildPlan) -> Runner:
    """The (not yet activated) runner of ``plan``."""
    conf, task = plan.conf, plan.task
    expect = expected_metadata(cfg, task)
    if conf.engine == "torch":
        run_cfg = cfg.model_copy(deep=True)
        run_cfg.runtime.torch_device = conf.device
        run_cfg.runtime.torch_fp16 = conf.precision == "fp16"
        runner = create_runner("torch", task, run_cfg)  # type: ignore[arg-type]
        runner.name = f"{conf.name}-{task}"
        return runner
    if conf.engine == "openvino":
        hint = "f32" if conf.precision == "fp32" else None
        return OpenVinoRunner(plan.model_file, plan.threads, expect, f"{conf.name}-{task}", hint)
    path = plan.model_file
    if conf.name == "ort-cuda-fp16":
        path = convert_fp16(path, plan.work_dir / "fp16" / path.name.replace(".onnx", ".fp16.onnx"))
    return BenchOnnxRunner(path, runtime_for(cfg, plan), conf, expect, plan.ort_spinning)


def cuda_sync(conf: Configuration) -> Callable[[], None] | None:
    """``torch.cuda.synchronize`` for Torch on CUDA (ONNX Runtime returns host arrays: synced)."""
    if conf.engine == "torch" and conf.device == "cuda":
        import torch

        return torch.cuda.synchronize
    return None

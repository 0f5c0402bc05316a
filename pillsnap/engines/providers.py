"""ONNX Runtime execution-provider selection and session creation (spec E-4).

Order: CUDA -> CPU by default; TensorRT -> CUDA -> CPU for the TensorRT path
(``tensorrt=True`` or ``runtime.tensorrt_first``). Every decision is logged: what
was requested, what this onnxruntime build offers, what was chosen with which
options, and which providers the session actually uses. A provider that is
missing or fails to start falls back with a warning, unless
``runtime.require_provider`` makes that a ``ProviderError``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pillsnap.exceptions import ProviderError, UserInputError

if TYPE_CHECKING:
    import onnxruntime

    from pillsnap.config import RuntimeConfig

log = logging.getLogger(__name__)
TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
_WARNED: set[tuple[tuple[str, ...], tuple[str, ...]]] = set()
_FIX = "install pillsnap[gpu] (onnxruntime-gpu, not onnxruntime) and check the NVIDIA driver / CUDA libraries"


def requested_providers(runtime_cfg: RuntimeConfig, tensorrt: bool = False) -> list[str]:
    return [TRT, CUDA, CPU] if tensorrt or runtime_cfg.tensorrt_first else [CUDA, CPU]


def select_onnx_providers(
    runtime_cfg: RuntimeConfig,
    tensorrt: bool = False,
    *,
    input_name: str | None = None,
    input_shape: list[int] | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """The available providers in preference order, each with its options.

    ``input_name`` / ``input_shape`` (``[N,3,H,W]``) add TensorRT optimisation
    profiles for the batch range ``profile_min/opt/max_batch`` of the config.
    """
    import onnxruntime as ort

    requested = requested_providers(runtime_cfg, tensorrt)
    available = list(ort.get_available_providers())
    if requested[0] not in available and runtime_cfg.require_provider:
        raise ProviderError(
            f"{requested[0]} was requested (runtime.require_provider=true) but this onnxruntime offers only "
            f"{', '.join(available)}. Fix: {_FIX}; or set runtime.require_provider=false to fall back."
        )
    chosen = [name for name in requested if name in available]
    missing = [name for name in requested if name not in available]
    if missing:
        # Warn once per process and combination; a CPU-only machine would otherwise repeat it per session.
        level = logging.INFO if (tuple(missing), tuple(chosen)) in _WARNED else logging.WARNING
        _WARNED.add((tuple(missing), tuple(chosen)))
        log.log(
            level,
            "onnxruntime providers %s are unavailable (available: %s); falling back to %s. "
            "For GPU inference: %s",
            missing,
            available,
            chosen,
            _FIX,
        )
    result = [
        (name, _provider_options(name, runtime_cfg, input_name, input_shape)) for name in chosen
    ]
    log.info(
        "onnxruntime providers: requested %s, available %s, chosen %s",
        requested,
        available,
        [f"{n}{o if o else ''}" for n, o in result],
    )
    return result


def _provider_options(
    name: str, runtime_cfg: RuntimeConfig, input_name: str | None, input_shape: list[int] | None
) -> dict[str, Any]:
    if name == CUDA:
        c = runtime_cfg.cuda
        return {
            "device_id": str(c.device_id),
            "cudnn_conv_use_max_workspace": str(int(c.cudnn_conv_use_max_workspace)),
            "arena_extend_strategy": c.arena_extend_strategy,
        }
    if name == TRT:
        t = runtime_cfg.tensorrt
        opts: dict[str, Any] = {
            "device_id": str(runtime_cfg.cuda.device_id),
            "trt_fp16_enable": str(t.fp16),
            "trt_max_workspace_size": str(int(t.workspace_gb * (1 << 30))),
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": str(t.engine_cache_path),
            "trt_timing_cache_enable": "True",
            "trt_timing_cache_path": str(t.timing_cache_path),
        }
        if input_name and input_shape and len(input_shape) == 4:
            hw = "x".join(str(d) for d in input_shape[1:])
            for key, batch in (
                ("min", t.profile_min_batch),
                ("opt", t.profile_opt_batch),
                ("max", t.profile_max_batch),
            ):
                opts[f"trt_profile_{key}_shapes"] = f"{input_name}:{batch}x{hw}"
        return opts
    return {}


def session_options(runtime_cfg: RuntimeConfig) -> onnxruntime.SessionOptions:
    """ORT_ENABLE_ALL graph optimisation; thread counts from the config (0 = onnxruntime decides)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = runtime_cfg.intra_op_threads
    so.inter_op_num_threads = runtime_cfg.inter_op_threads
    log.info(
        "onnxruntime session options: graph_optimization_level=ORT_ENABLE_ALL, intra_op_threads=%s, "
        "inter_op_threads=%s",
        runtime_cfg.intra_op_threads or "auto",
        runtime_cfg.inter_op_threads or "auto",
    )
    return so


def create_session(
    path: str | Path,
    runtime_cfg: RuntimeConfig,
    tensorrt: bool = False,
    *,
    input_name: str | None = None,
    input_shape: list[int] | None = None,
) -> onnxruntime.InferenceSession:
    """An ``InferenceSession`` on the best provider that actually starts; logs the providers in use."""
    import onnxruntime as ort

    providers = select_onnx_providers(
        runtime_cfg, tensorrt, input_name=input_name, input_shape=input_shape
    )
    for name, opts in providers:
        for key in ("trt_engine_cache_path", "trt_timing_cache_path"):
            if key in opts:
                Path(opts[key]).mkdir(parents=True, exist_ok=True)
    so = session_options(runtime_cfg)
    try:
        # enable_fallback=0: onnxruntime's own fallback prints to stdout; we fall back and log ourselves.
        session = ort.InferenceSession(
            str(path), sess_options=so, providers=providers, enable_fallback=0
        )
    except Exception as exc:  # pybind errors (Fail, InvalidGraph, ...) share no narrower base
        gpu = [n for n, _ in providers if n != CPU]
        if not gpu:
            raise UserInputError(
                f"onnxruntime cannot load {path}: {exc}. Is it a complete ONNX file "
                f"written by `pillsnap release` / export?"
            ) from exc
        if runtime_cfg.require_provider:
            raise ProviderError(
                f"{gpu[0]} failed to start for {path}: {exc}. Fix: {_FIX}."
            ) from exc
        log.warning(
            "providers %s failed to start for %s (%s); falling back to CPUExecutionProvider",
            gpu,
            path,
            exc,
        )
        session = ort.InferenceSession(
            str(path), sess_options=so, providers=[CPU], enable_fallback=0
        )
    in_use = session.get_providers()
    wanted = requested_providers(runtime_cfg, tensorrt)
    lost = [n for n, _ in providers if n not in in_use]
    if lost:
        if runtime_cfg.require_provider and wanted[0] not in in_use:
            raise ProviderError(
                f"{wanted[0]} was requested but the session runs on {in_use} "
                f"(available: {ort.get_available_providers()}). Fix: {_FIX}."
            )
        log.warning(
            "providers %s were chosen but are not in use; the session runs on %s", lost, in_use
        )
    log.info("onnxruntime session for %s uses providers %s", Path(path).name, in_use)
    return session

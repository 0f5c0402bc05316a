"""The configurations the benchmark knows, and why one cannot run on this machine.

A configuration is engine + device + precision (``ort-cpu-int8``). ``unavailable_reason``
answers before anything is built, from what is installed and what the release holds,
so a CPU-only machine says ``onnxruntime-gpu not installed`` instead of timing a silent
CPU fallback; a configuration that passes this check can still fail to start, and then
its row carries the error (``bench/engines.py``).
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from functools import cache

from pillsnap.config.bench import CONFIGURATIONS

log = logging.getLogger(__name__)
TRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
GPU_FIX = (
    "install pillsnap[gpu] (onnxruntime-gpu instead of onnxruntime) on a machine with an NVIDIA GPU"
)
OPENVINO_FIX = "pip install 'pillsnap[openvino]'"


@dataclass(frozen=True)
class Configuration:
    name: str
    engine: str
    """torch | onnxruntime | tensorrt | openvino"""
    device: str
    """cpu | cuda"""
    precision: str
    """fp32 | fp16 | int8 | default (OpenVINO picks: bf16 on CPUs with AMX/AVX512-BF16, else f32)"""
    model: str
    """Which file it runs: ``checkpoint`` (Torch), ``onnx`` (the float32 release ONNX), ``int8`` (its INT8 ONNX)."""
    description: str


CATALOGUE: dict[str, Configuration] = {
    c.name: c
    for c in (
        Configuration(
            "torch-cpu-fp32", "torch", "cpu", "fp32", "checkpoint", "PyTorch eager, float32, CPU"
        ),
        Configuration(
            "torch-cuda-fp32", "torch", "cuda", "fp32", "checkpoint", "PyTorch eager, float32, CUDA"
        ),
        Configuration(
            "torch-cuda-fp16", "torch", "cuda", "fp16", "checkpoint", "PyTorch eager, half, CUDA"
        ),
        Configuration(
            "ort-cpu-fp32", "onnxruntime", "cpu", "fp32", "onnx", "ONNX Runtime CPU EP, float32"
        ),
        Configuration(
            "ort-cpu-int8",
            "onnxruntime",
            "cpu",
            "int8",
            "int8",
            "ONNX Runtime CPU EP, the release's static INT8 (QDQ) model",
        ),
        Configuration(
            "ort-cuda-fp32", "onnxruntime", "cuda", "fp32", "onnx", "ONNX Runtime CUDA EP, float32"
        ),
        Configuration(
            "ort-cuda-fp16",
            "onnxruntime",
            "cuda",
            "fp16",
            "onnx",
            "ONNX Runtime CUDA EP, the float32 ONNX converted to float16 (float32 inputs/outputs)",
        ),
        Configuration(
            "tensorrt-fp16", "tensorrt", "cuda", "fp16", "onnx", "ONNX Runtime TensorRT EP, fp16"
        ),
        Configuration(
            "tensorrt-int8",
            "tensorrt",
            "cuda",
            "int8",
            "int8",
            "ONNX Runtime TensorRT EP, INT8 from the release's QDQ model (fp16 elsewhere)",
        ),
        Configuration(
            "openvino-cpu",
            "openvino",
            "cpu",
            "default",
            "onnx",
            "OpenVINO CPU reading the release ONNX, its default settings (the peer to beat)",
        ),
        Configuration(
            "openvino-cpu-fp32",
            "openvino",
            "cpu",
            "fp32",
            "onnx",
            "OpenVINO CPU reading the release ONNX, INFERENCE_PRECISION_HINT=f32",
        ),
        Configuration(
            "openvino-cpu-int8",
            "openvino",
            "cpu",
            "int8",
            "int8",
            "OpenVINO CPU reading the release's INT8 (QDQ) ONNX",
        ),
    )
}
assert tuple(CATALOGUE) == CONFIGURATIONS  # the config's list and this table agree

TORCH_REFERENCE = "torch-cpu-fp32"
"""Accuracy reference (agreement with Torch float32) and the CPU speed baseline."""


@dataclass(frozen=True)
class Machine:
    """What this machine offers, probed once: Torch CUDA, ONNX Runtime providers, OpenVINO."""

    torch_cuda: bool
    ort_providers: tuple[str, ...]
    openvino: str | None
    """OpenVINO version, None when not installed."""
    gpu_name: str | None = None


@cache
def probe_machine() -> Machine:
    import torch

    from pillsnap.environment import available_providers

    cuda = bool(torch.cuda.is_available())
    openvino = None
    if importlib.util.find_spec("openvino") is not None:
        try:
            import openvino

            openvino = str(openvino.__version__)
        except Exception as exc:  # noqa: BLE001 - a broken install (missing shared library) is reported, not fatal
            log.warning("openvino is installed but cannot be imported: %s", exc)
    return Machine(
        cuda,
        tuple(available_providers()),
        openvino,
        torch.cuda.get_device_name(0) if cuda else None,
    )


def unavailable_reason(
    conf: Configuration, machine: Machine, has_int8: bool, task: str
) -> str | None:
    """Why ``conf`` cannot run here for ``task`` (None when it can be tried)."""
    if conf.model == "int8" and not has_int8:
        return (
            f"the release has no INT8 {task} model ({task}-<tag>.int8.onnx): "
            "run the quantize stage first"
        )
    if conf.engine == "torch" and conf.device == "cuda" and not machine.torch_cuda:
        return "no CUDA device: torch.cuda.is_available() is false"
    if conf.engine == "onnxruntime" and conf.device == "cuda" and CUDA not in machine.ort_providers:
        return _gpu_reason(CUDA, machine)
    if conf.engine == "tensorrt" and TRT not in machine.ort_providers:
        return _gpu_reason(TRT, machine)
    if conf.engine == "openvino" and machine.openvino is None:
        return f"openvino not installed ({OPENVINO_FIX})"
    return None


def _gpu_reason(provider: str, machine: Machine) -> str:
    if CUDA not in machine.ort_providers:
        return (
            f"onnxruntime-gpu not installed: this onnxruntime offers only "
            f"{', '.join(machine.ort_providers) or 'no provider'} ({GPU_FIX})"
        )
    return f"{provider} not in this onnxruntime build (offers {', '.join(machine.ort_providers)})"


def select(names: list[str]) -> list[Configuration]:
    return [CATALOGUE[n] for n in names]

"""Why a configuration cannot run, said before anything is built; config names are checked."""

from __future__ import annotations

import pytest

from pillsnap.bench.catalogue import CATALOGUE, Machine, unavailable_reason
from pillsnap.config import load_config
from pillsnap.config.bench import CONFIGURATIONS
from pillsnap.exceptions import ConfigError

CPU_ONLY = Machine(False, ("AzureExecutionProvider", "CPUExecutionProvider"), None)
GPU = Machine(
    True,
    ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
    "2026.4.1",
    "NVIDIA H200",
)


def reason(name: str, machine: Machine, int8: bool = True) -> str | None:
    return unavailable_reason(CATALOGUE[name], machine, int8, "classification")


def test_every_configuration_of_the_config_is_in_the_catalogue():
    assert tuple(CATALOGUE) == CONFIGURATIONS


def test_cpu_only_machine_explains_every_gpu_and_missing_extra():
    assert reason("torch-cpu-fp32", CPU_ONLY) is None
    assert reason("ort-cpu-fp32", CPU_ONLY) is None
    assert "no CUDA device" in reason("torch-cuda-fp16", CPU_ONLY)
    for name in ("ort-cuda-fp32", "ort-cuda-fp16", "tensorrt-fp16", "tensorrt-int8"):
        assert "onnxruntime-gpu not installed" in reason(name, CPU_ONLY)
        assert "pillsnap[gpu]" in reason(name, CPU_ONLY)
    assert (
        reason("openvino-cpu", CPU_ONLY)
        == "openvino not installed (pip install 'pillsnap[openvino]')"
    )


def test_int8_configurations_need_the_release_int8_models():
    for name in ("ort-cpu-int8", "tensorrt-int8", "openvino-cpu-int8"):
        assert "no INT8 classification model" in reason(name, GPU, int8=False)
        assert "quantize stage" in reason(name, GPU, int8=False)
        assert reason(name, GPU, int8=True) is None


def test_gpu_machine_can_try_everything():
    assert all(reason(name, GPU) is None for name in CATALOGUE)
    no_trt = Machine(True, ("CUDAExecutionProvider", "CPUExecutionProvider"), None)
    assert "TensorrtExecutionProvider not in this onnxruntime build" in reason(
        "tensorrt-fp16", no_trt
    )


def test_unknown_or_unmeasured_configurations_are_config_errors():
    with pytest.raises(ConfigError, match="unknown configuration.*tensorrt-fp8"):
        load_config(None, ["benchmark.configurations=[tensorrt-fp8]"])
    with pytest.raises(ConfigError, match="benchmark.require names.*leaves out"):
        load_config(
            None, ["benchmark.configurations=[ort-cpu-fp32]", "benchmark.require=[tensorrt-fp16]"]
        )
    with pytest.raises(ConfigError, match="batch size"):
        load_config(None, ["benchmark.batch_sizes=[0]"])
    assert load_config(None, ["benchmark.batch_sizes=[8, 1, 8]"]).benchmark.batch_sizes == [1, 8]

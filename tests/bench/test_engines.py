"""Runners per configuration: exact providers (no silent fallback), GPU options, OpenVINO, fp16.

No GPU is needed: the GPU paths are checked by building their options against an
onnxruntime that pretends to offer CUDA / TensorRT, and by opening a real session that
then silently runs on the CPU, which the benchmark must refuse to time.
"""

from __future__ import annotations

import numpy as np
import pytest
from _demo_release import demo_release

from pillsnap.bench.catalogue import CATALOGUE, CPU, CUDA, TRT
from pillsnap.bench.engines import (
    BenchOnnxRunner,
    BuildPlan,
    OpenVinoRunner,
    convert_fp16,
    make_runner,
    provider_list,
    runtime_for,
)
from pillsnap.engines.runners import create_runner, expected_metadata
from pillsnap.exceptions import MetadataMismatchError, ProviderError

ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.slow
GPU_BUILD = [TRT, CUDA, CPU]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    cfg, exports = demo_release(tmp_path_factory)
    return cfg, {task: res.onnx_path for task, res in exports.items()}


@pytest.fixture
def gpu_build(monkeypatch):
    """An onnxruntime that lists the GPU providers (as onnxruntime-gpu does)."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(GPU_BUILD))


def crops(cfg, n=4):
    s = cfg.classification.crop_size
    return np.random.default_rng(0).normal(size=(n, 3, s, s)).astype(np.float32)


def plan_for(cfg, name, path, tmp_path, batches=(1, 64)):
    return BuildPlan(
        CATALOGUE[name], "classification", path, 2, list(batches), tmp_path, tmp_path / "trt"
    )


def test_gpu_options_are_built_from_the_config(release, gpu_build, tmp_path):
    cfg, onnx = release
    trt_plan = plan_for(cfg, "tensorrt-fp16", onnx["classification"], tmp_path)
    rt = runtime_for(cfg, trt_plan)
    assert rt.require_provider and rt.intra_op_threads == 2
    assert rt.tensorrt.profile_max_batch >= 64 and rt.tensorrt.engine_cache_path == tmp_path / "trt"
    chosen = provider_list(CATALOGUE["tensorrt-fp16"], rt, "input", [1, 3, 128, 128])
    assert [n for n, _ in chosen] == GPU_BUILD
    trt = chosen[0][1]
    assert trt["trt_fp16_enable"] == "True" and trt["trt_int8_enable"] == "False"
    assert trt["trt_engine_cache_path"] == str(tmp_path / "trt")
    assert trt["trt_profile_max_shapes"] == "input:64x3x128x128"
    int8 = provider_list(CATALOGUE["tensorrt-int8"], rt, "input", [1, 3, 128, 128])[0][1]
    assert int8["trt_int8_enable"] == "True" and int8["trt_fp16_enable"] == "True"
    cuda_rt = runtime_for(cfg, plan_for(cfg, "ort-cuda-fp32", onnx["classification"], tmp_path))
    cuda = provider_list(CATALOGUE["ort-cuda-fp32"], cuda_rt)
    assert [n for n, _ in cuda] == [CUDA, CPU] and cuda[0][1]["device_id"] == "0"
    # a CPU configuration never lands on a GPU, whatever the build offers
    assert provider_list(CATALOGUE["ort-cpu-fp32"], cuda_rt) == [(CPU, {})]


@pytest.mark.filterwarnings("ignore:Specified provider")
def test_a_gpu_configuration_that_silently_runs_on_the_cpu_is_refused(release, gpu_build, tmp_path):
    cfg, onnx = release
    for name in ("ort-cuda-fp32", "tensorrt-fp16"):
        runner = make_runner(cfg, plan_for(cfg, name, onnx["classification"], tmp_path))
        with pytest.raises(
            ProviderError, match="session runs on .*CPUExecutionProvider.*not timed"
        ):
            runner.activate()
        assert not runner.is_active


def test_without_onnxruntime_gpu_the_error_says_what_to_install(release, tmp_path):
    cfg, onnx = release
    if CUDA in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    rt = runtime_for(cfg, plan_for(cfg, "ort-cuda-fp32", onnx["classification"], tmp_path))
    with pytest.raises(ProviderError, match=r"pillsnap\[gpu\]"):
        provider_list(CATALOGUE["ort-cuda-fp32"], rt)


def test_cpu_runner_is_the_one_runner_interface_on_the_cpu_provider(release, tmp_path):
    cfg, onnx = release
    x = crops(cfg)
    plan = plan_for(cfg, "ort-cpu-fp32", onnx["classification"], tmp_path)
    plan.ort_spinning = False
    with (
        make_runner(cfg, plan) as bench,
        create_runner("onnx", "classification", cfg, onnx["classification"]) as ref,
    ):
        assert isinstance(bench, BenchOnnxRunner)
        np.testing.assert_array_equal(bench.infer(x), ref.infer(x))
        assert bench.describe()["providers"] == [CPU] and bench.describe()["precision"] == "fp32"
        assert bench.last_inference_time is not None


def test_fp16_conversion_keeps_float32_io_and_metadata(release, tmp_path):
    import onnx as onnx_lib

    cfg, onnx = release
    out = convert_fp16(onnx["classification"], tmp_path / "c.fp16.onnx")
    model = onnx_lib.load(str(out))
    f16 = onnx_lib.TensorProto.FLOAT16
    assert sum(init.data_type == f16 for init in model.graph.initializer) > 10
    assert model.graph.input[0].type.tensor_type.elem_type == onnx_lib.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx_lib.TensorProto.FLOAT
    meta = {p.key: p.value for p in model.metadata_props}
    assert all(meta.get(k) == v for k, v in expected_metadata(cfg, "classification").items())
    assert convert_fp16(onnx["classification"], out) == out  # cached: not converted twice


def test_openvino_runner_reads_the_release_onnx(release):
    pytest.importorskip(
        "openvino", reason="the openvino extra is not installed (pip install 'pillsnap[openvino]')"
    )
    cfg, onnx = release
    x = crops(cfg)
    expect = expected_metadata(cfg, "classification")
    with create_runner("onnx", "classification", cfg, onnx["classification"]) as ref:
        want = ref.infer(x)
    with OpenVinoRunner(onnx["classification"], 2, expect, "ov", precision="f32") as f32:
        np.testing.assert_allclose(f32.infer(x), want, atol=1e-3)
        assert f32.describe()["precision"] == "f32" and f32.input_shape[1:] == [3, 128, 128]
    with OpenVinoRunner(onnx["classification"], 2, expect, "ov") as default:
        got = default.infer(x)
        assert default.describe()["providers"][0].startswith("openvino:CPU")
        assert (got.argmax(1) == want.argmax(1)).all()  # bf16 on AMX CPUs: close, not equal
        assert got is not default.infer(x)  # the request's buffer is copied out
    wrong = {**expect, "preprocess.crop": "999"}
    with pytest.raises(MetadataMismatchError, match="preprocess.crop"):
        OpenVinoRunner(onnx["classification"], 2, wrong, "ov").activate()

"""Runner interface, provider selection with CPU fallback, require_provider, the factory."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from _tiny import experiment_config

from pillsnap.config import RuntimeConfig, apply_overrides
from pillsnap.engines.runners import (
    OnnxRunner,
    TorchRunner,
    create_runner,
    infer_onnx,
    infer_torch,
    select_onnx_providers,
)
from pillsnap.exceptions import (
    MetadataMismatchError,
    MissingPathError,
    PillsnapError,
    ProviderError,
    UserInputError,
)
from pillsnap.models.export import export_models

ort = pytest.importorskip(
    "onnxruntime", reason="onnxruntime is not installed: the ONNX runner tests need it"
)
pytestmark = pytest.mark.slow
GPU_PROVIDERS = {"CUDAExecutionProvider", "TensorrtExecutionProvider"}
needs_no_gpu = pytest.mark.skipif(
    bool(GPU_PROVIDERS & set(ort.get_available_providers())),
    reason="this onnxruntime has GPU providers: the fallback cannot be observed",
)


@pytest.fixture(scope="module")
def demo_cfg(tmp_path_factory):
    return experiment_config(tmp_path_factory.mktemp("runners"))


@pytest.fixture(scope="module")
def onnx_paths(demo_cfg):
    res = export_models(demo_cfg, demo_cfg.paths.out_dir, tag="runners")
    return {k: v.onnx_path for k, v in res.items()}


def _crops(cfg, n=2):
    s = cfg.classification.crop_size
    return np.random.default_rng(1).normal(size=(n, 3, s, s)).astype(np.float32)


def test_torch_and_onnx_classifier_runners_agree(demo_cfg, onnx_paths):
    x = _crops(demo_cfg, 3)
    with (
        create_runner("torch", "classification", demo_cfg) as t,
        create_runner("onnx", "classification", demo_cfg, onnx_paths["classification"]) as o,
    ):
        lt, lo = t.infer(x), o.infer(x)
        assert lt.shape == lo.shape == (3, demo_cfg.classification.num_classes)
        assert np.abs(lt - lo).max() < 1e-3
        assert t.last_inference_time > 0 and o.last_inference_time > 0
        assert t.describe() == {
            "engine": "torch",
            "providers": ["cpu"],
            "precision": "fp32",
            "device": "cpu",
            "model_path": str(demo_cfg.checkpoint_path("classification")),
        }
        d = o.describe()
        assert d["engine"] == "onnxruntime" and d["providers"][-1] == "CPUExecutionProvider"
        assert d["model_path"] == str(onnx_paths["classification"])


def test_detector_runners_return_the_raw_head(demo_cfg, onnx_paths):
    s = demo_cfg.detection.imgsz
    x = np.full((2, 3, s, s), 0.5, np.float32)
    raw_t = infer_torch(demo_cfg, "detection", x)
    raw_o = infer_onnx(demo_cfg, "detection", x, onnx_paths["detection"])
    assert raw_t.shape == raw_o.shape and raw_t.shape[:2] == (2, 4 + demo_cfg.detection.num_classes)
    assert np.abs(raw_t[:, 4:] - raw_o[:, 4:]).max() < 1e-4


def test_infer_validates_its_input(demo_cfg, onnx_paths):
    runner = create_runner("onnx", "classification", demo_cfg, onnx_paths["classification"])
    with pytest.raises(PillsnapError, match="not active"):
        runner.infer(_crops(demo_cfg))
    with runner:
        with pytest.raises(UserInputError, match="float32"):
            runner.infer(_crops(demo_cfg).astype(np.float64))
        with pytest.raises(UserInputError, match="expected a batch"):
            runner.infer(np.zeros((1, 3, 8, 8), np.float32))
        with pytest.raises(UserInputError, match="expected a batch"):
            runner.infer(np.zeros((0, 3) + _crops(demo_cfg).shape[2:], np.float32))
    assert not runner.is_active


@needs_no_gpu
def test_tensorrt_request_falls_back_to_cpu_with_a_warning(demo_cfg, onnx_paths, caplog):
    caplog.set_level(logging.INFO, logger="pillsnap")
    with create_runner(
        "tensorrt", "classification", demo_cfg, onnx_paths["classification"]
    ) as runner:
        assert runner.describe()["providers"] == ["CPUExecutionProvider"]
        assert runner.describe()["device"] == "cpu" and runner.describe()["precision"] == "fp32"
        runner.infer(_crops(demo_cfg))
    text = caplog.text
    assert "TensorrtExecutionProvider" in text and "unavailable" in text and "pillsnap[gpu]" in text
    assert "uses providers ['CPUExecutionProvider']" in text
    assert "ORT_ENABLE_ALL" in text


@needs_no_gpu
def test_require_provider_fails_listing_available(demo_cfg, onnx_paths):
    cfg = apply_overrides(demo_cfg, {"runtime.require_provider": True})
    with pytest.raises(ProviderError) as err:
        create_runner("onnx", "classification", cfg, onnx_paths["classification"]).activate()
    assert "CUDAExecutionProvider" in str(err.value) and "CPUExecutionProvider" in str(err.value)
    assert "pillsnap[gpu]" in str(err.value)


@needs_no_gpu
@pytest.mark.filterwarnings("ignore:Specified provider")
def test_provider_that_is_listed_but_not_used_is_reported(
    demo_cfg, onnx_paths, monkeypatch, caplog
):
    # Simulates a GPU build whose CUDA libraries are missing: listed as available, not usable.
    real = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *real])
    caplog.set_level(logging.WARNING, logger="pillsnap")
    with OnnxRunner(onnx_paths["classification"], demo_cfg.runtime) as runner:
        assert runner.describe()["providers"] == ["CPUExecutionProvider"]
    assert "['CUDAExecutionProvider'] were chosen but are not in use" in caplog.text
    with pytest.raises(
        ProviderError, match="CUDAExecutionProvider was requested but the session runs on"
    ):
        OnnxRunner(onnx_paths["classification"], RuntimeConfig(require_provider=True)).activate()


def test_tensorrt_options_come_from_config(monkeypatch, tmp_path):
    monkeypatch.setattr(
        ort,
        "get_available_providers",
        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    cfg = RuntimeConfig.model_validate(
        {
            "tensorrt": {
                "fp16": True,
                "workspace_gb": 2,
                "engine_cache_path": tmp_path,
                "profile_max_batch": 16,
            },
            "cuda": {"device_id": 1},
        }
    )
    chosen = select_onnx_providers(
        cfg, tensorrt=True, input_name="input", input_shape=[1, 3, 64, 64]
    )
    assert [name for name, _ in chosen] == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    trt, cuda = chosen[0][1], chosen[1][1]
    assert trt["trt_fp16_enable"] == "True" and trt["trt_max_workspace_size"] == str(2 << 30)
    assert (
        trt["trt_engine_cache_path"] == str(tmp_path)
        and trt["trt_profile_max_shapes"] == "input:16x3x64x64"
    )
    assert cuda["device_id"] == "1" and cuda["cudnn_conv_use_max_workspace"] == "1"
    assert [n for n, _ in select_onnx_providers(cfg)] == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]


def test_factory_errors_say_what_to_do(demo_cfg, onnx_paths, tmp_path):
    with pytest.raises(UserInputError, match="unknown engine 'openvino'"):
        create_runner("openvino", "classification", demo_cfg)  # type: ignore[arg-type]
    with pytest.raises(UserInputError, match="needs the classification ONNX file"):
        create_runner("onnx", "classification", demo_cfg)
    with pytest.raises(MissingPathError, match="missing.onnx"):
        create_runner("onnx", "classification", demo_cfg, tmp_path / "missing.onnx")
    with pytest.raises(UserInputError, match="--engine onnx"):
        create_runner("torch", "classification", demo_cfg, onnx_paths["classification"])
    with pytest.raises(UserInputError, match="not an .onnx file"):
        create_runner("onnx", "detection", demo_cfg, demo_cfg.checkpoint_path("detection"))


def test_onnx_exported_for_another_setup_is_refused(demo_cfg, onnx_paths):
    other = apply_overrides(demo_cfg, {"classification.preprocessing.interpolation": "nearest"})
    with pytest.raises(MetadataMismatchError, match="preprocess.interpolation"):
        create_runner("onnx", "classification", other, onnx_paths["classification"]).activate()
    with pytest.raises(MetadataMismatchError, match="pillsnap.task"):
        create_runner("onnx", "classification", demo_cfg, onnx_paths["detection"]).activate()


def test_torch_runner_wraps_any_module():
    import torch

    runner = TorchRunner(torch.nn.Flatten(), device="auto", input_shape=[None, 3, 2, 2])
    with runner:
        out = runner.infer(np.ones((1, 3, 2, 2), np.float32))
    assert out.shape == (1, 12) and out.dtype == np.float32

"""Two-stage export: file names, atomic writes, float32 from a half checkpoint, metadata,
input-shape overrides, operator errors, and Torch <-> ONNX sanity on both models."""

from __future__ import annotations

import re

import numpy as np
import pytest
from _tiny import experiment_config, pill_photo

from pillsnap.config import apply_overrides
from pillsnap.exceptions import ExportError
from pillsnap.models import common
from pillsnap.models.export import export_classification_onnx, export_models, export_onnx
from pillsnap.preprocess import PreprocessSpec, letterbox_batch

onnx = pytest.importorskip("onnx", reason="onnx is needed to export")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_cfg(tmp_path_factory):
    return experiment_config(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def exported(demo_cfg):
    import torch

    threads = torch.get_num_threads()
    result = export_models(demo_cfg, demo_cfg.paths.out_dir, tag="20250101-000000-abc1234")
    # Ultralytics' select_device sets cpu_count - 1 threads; the comparison after it must not run on fewer cores.
    assert torch.get_num_threads() == threads
    return result


def _input_dims(path):
    dims = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]


def test_two_files_tagged_and_nothing_else_left(exported, demo_cfg):
    assert set(exported) == {"detection", "classification"}
    names = sorted(p.name for p in demo_cfg.paths.out_dir.iterdir())
    assert names == [
        "classification-20250101-000000-abc1234.onnx",
        "detection-20250101-000000-abc1234.onnx",
    ]


def test_classification_graph_io_and_float32(exported, demo_cfg):
    res = exported["classification"]
    model = onnx.load(res.onnx_path)
    assert res.input_names == ["input"] and res.output_names == ["logits"]
    assert res.dynamic_axes == {"input": {0: "batch"}, "logits": {0: "batch"}}
    size = demo_cfg.classification.crop_size
    assert _input_dims(res.onnx_path) == ["batch", 3, size, size]
    assert {i.data_type for i in model.graph.initializer} <= {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.INT64,
    }
    assert model.opset_import[0].version == demo_cfg.export.opset == res.opset
    assert res.params_million > 0 and res.exported_at_utc.endswith("Z")


def test_detection_graph_is_raw_head_with_dynamic_axes(exported, demo_cfg):
    res = exported["detection"]
    assert res.output_names == ["output0"]
    assert res.dynamic_axes["images"] == {0: "batch", 2: "height", 3: "width"}
    dims = common.onnx_output_dims(onnx.load(res.onnx_path, load_external_data=False))
    assert dims[1] == 4 + demo_cfg.detection.num_classes


def test_metadata_pins_preprocessing_and_release(exported, demo_cfg):
    cls_meta = common.read_onnx_metadata(exported["classification"].onnx_path)
    for key, value in PreprocessSpec.from_config(demo_cfg.classification).to_metadata().items():
        assert cls_meta[key] == value
    det_meta = common.read_onnx_metadata(exported["detection"].onnx_path)
    assert det_meta[common.META_LETTERBOX_IMGSZ] == str(demo_cfg.detection.imgsz)
    assert det_meta["task"] == "detect", "Ultralytics' own metadata is kept"
    for meta, task in ((cls_meta, "classification"), (det_meta, "detection")):
        assert meta[common.META_TASK] == task
        assert meta[common.META_TAG] == "20250101-000000-abc1234"
        assert meta[common.META_OPSET] == "17"
        assert len(meta[common.META_CLASS_MAP_DIGEST]) == 64
    assert cls_meta[common.META_NUM_CLASSES] == str(demo_cfg.classification.num_classes)


def test_torch_and_onnx_agree_on_both_models(exported, demo_cfg):
    ort = pytest.importorskip(
        "onnxruntime", reason="onnxruntime is needed to run the exported models"
    )
    import torch

    from pillsnap.models.classifier import load_classification_model
    from pillsnap.models.detector import load_detection_model

    photos = [pill_photo(seed=s) for s in range(2)]
    x, _ = letterbox_batch(photos, demo_cfg.detection.imgsz)
    sess = ort.InferenceSession(exported["detection"].onnx_path, providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        raw_t = load_detection_model(demo_cfg)(torch.from_numpy(x))[0].numpy()
    raw_o = sess.run(None, {"images": x})[0]
    assert raw_o.shape == raw_t.shape
    assert np.abs(raw_o[:, 4:] - raw_t[:, 4:]).max() < 1e-4  # scores
    assert np.abs(raw_o[:, :4] - raw_t[:, :4]).max() < 1e-2  # box pixels

    size = demo_cfg.classification.crop_size
    crops = np.random.default_rng(0).normal(size=(3, 3, size, size)).astype(np.float32)
    sess = ort.InferenceSession(
        exported["classification"].onnx_path, providers=["CPUExecutionProvider"]
    )
    with torch.inference_mode():
        logits_t = load_classification_model(demo_cfg)(torch.from_numpy(crops)).numpy()
    assert np.abs(sess.run(None, {"input": crops})[0] - logits_t).max() < 1e-3


def test_input_shape_override_is_honoured(demo_cfg, tmp_path):
    follow_size = {
        "classification.preprocessing.crop": None,
        "classification.preprocessing.resize": None,
    }
    for size in (64, 96):
        cfg = apply_overrides(
            demo_cfg, {"export.classification_input_shape": [2, 3, size, size], **follow_size}
        )
        path, res = export_onnx(cfg, None, tmp_path, task="classification", tag=f"s{size}")
        assert _input_dims(path) == ["batch", 3, size, size]
        assert res.input_shape == [2, 3, size, size]
        assert common.read_onnx_metadata(path)["preprocess.crop"] == str(size)
    cfg = apply_overrides(demo_cfg, {"classification.img_size": 80, **follow_size})
    assert _input_dims(export_onnx(cfg, None, tmp_path, tag="img80")[0]) == ["batch", 3, 80, 80]
    # The demo config pins preprocessing.crop explicitly: an export shape carries it along.
    carried = apply_overrides(demo_cfg, {"export.classification_input_shape": [1, 3, 72, 72]})
    path, _ = export_onnx(carried, None, tmp_path, task="classification", tag="s72")
    assert _input_dims(path) == ["batch", 3, 72, 72]
    assert common.read_onnx_metadata(path)["preprocess.crop"] == "72"


def test_detection_input_shape_and_static_export(demo_cfg, tmp_path):
    cfg = apply_overrides(
        demo_cfg, {"export.detection_input_shape": [2, 3, 192, 192], "export.dynamic": False}
    )
    path, res = export_onnx(cfg, None, tmp_path, task="detection", tag="d192")
    assert _input_dims(path) == [2, 3, 192, 192] and res.dynamic_axes == {}
    meta = common.read_onnx_metadata(path)
    assert (
        meta[common.META_LETTERBOX_IMGSZ] == "192"
        and meta[common.META_INPUT_SHAPE] == "2,3,192,192"
    )


def test_default_tag_is_utc_and_sha(demo_cfg, tmp_path):
    res = export_classification_onnx(demo_cfg, None, tmp_path)
    assert re.fullmatch(
        r"classification-\d{8}-\d{6}-([0-9a-f]{7}|nogit)\.onnx", res.onnx_path.split("/")[-1]
    )


def test_unsupported_operator_is_named_with_the_fix(demo_cfg, tmp_path, monkeypatch):
    import torch

    def refuse(*args, **kwargs):
        raise torch.onnx.errors.UnsupportedOperatorError("aten::fancy_op", 17, None)

    monkeypatch.setattr(torch.onnx, "export", refuse)
    with pytest.raises(ExportError) as err:
        export_classification_onnx(demo_cfg, None, tmp_path, tag="t")
    assert "aten::fancy_op" in str(err.value) and "export.opset=18" in str(err.value)
    assert "onnxruntime" in str(err.value)
    assert list(tmp_path.iterdir()) == [], "a failed export leaves no file behind"

"""The one preprocessing: every engine gets the very same tensors, and the Torch letterbox
path reproduces Ultralytics' own ``YOLO.predict`` boxes."""

from __future__ import annotations

import numpy as np
import pytest
from _tiny import experiment_config, low_conf, pill_photo
from PIL import Image

import pillsnap.pipeline as pipeline_mod
from pillsnap.classmap import ClassMap
from pillsnap.engines.runners import create_runner
from pillsnap.pipeline import Pipeline, classify_images, detect_images
from pillsnap.postprocess import decode_and_nms
from pillsnap.preprocess import PreprocessSpec, crop_box, letterbox, letterbox_batch, load_image

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_cfg(tmp_path_factory):
    return low_conf(experiment_config(tmp_path_factory.mktemp("preprocess")))


class Spy:
    """Wraps a runner and keeps every batch handed to ``infer``."""

    def __init__(self, runner):
        self.runner, self.batches = runner, []

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def infer(self, batch):
        self.batches.append(batch)
        return self.runner.infer(batch)


def test_torch_and_onnx_receive_the_same_tensors_from_the_one_preprocess(demo_cfg, monkeypatch):
    pytest.importorskip("onnxruntime", reason="onnxruntime is needed to compare engines")
    from pillsnap.models.export import export_models

    onnx = {
        k: v.onnx_path
        for k, v in export_models(demo_cfg, demo_cfg.paths.out_dir, tag="pre").items()
    }
    produced = []

    def spy_letterbox_batch(images, imgsz):
        out = letterbox_batch(images, imgsz)
        produced.append(out[0])
        return out

    monkeypatch.setattr(pipeline_mod, "letterbox_batch", spy_letterbox_batch)
    photos = [pill_photo(seed=s) for s in range(2)]
    spec = PreprocessSpec.from_config(demo_cfg.classification)
    crops = [crop_box(Image.fromarray(p), (40, 30, 120, 90), 0.1) for p in photos]
    class_map = ClassMap.load(demo_cfg.paths.class_map_path)
    seen = {}
    for engine, det_path, cls_path in (
        ("torch", None, None),
        ("onnx", onnx["detection"], onnx["classification"]),
    ):
        det = Spy(create_runner(engine, "detection", demo_cfg, det_path).activate())
        cls = Spy(create_runner(engine, "classification", demo_cfg, cls_path).activate())
        detect_images(det, photos, demo_cfg)
        classify_images(cls, crops, spec, class_map)
        assert det.batches[0] is produced[-1], (
            "the runner got the letterbox output itself, nothing re-done"
        )
        seen[engine] = (det.batches[0], cls.batches[0])
    np.testing.assert_array_equal(seen["torch"][0], seen["onnx"][0])
    np.testing.assert_array_equal(seen["torch"][1], seen["onnx"][1])
    pipe = Pipeline(
        Spy(create_runner("torch", "detection", demo_cfg)),
        Spy(create_runner("torch", "classification", demo_cfg)),
        class_map,
        demo_cfg,
    )
    pipe.predict(photos)
    assert pipe.detector.batches[0] is produced[-1]
    assert pipe.classifier.batches[0].shape[1:] == (3, spec.crop, spec.crop)


def test_torch_letterbox_path_reproduces_ultralytics_predict(demo_cfg, tmp_path):
    from ultralytics import YOLO

    path = tmp_path / "photo.png"  # PNG: identical pixels for cv2 (Ultralytics) and PIL (us)
    Image.fromarray(pill_photo(width=333, height=251, pills=4, seed=7)).save(path)
    conf, iou, max_det = 0.001, 0.5, 20
    # rect=False: YOLO.predict defaults to a minimal-rectangle letterbox for .pt models; the
    # release feeds square [N,3,S,S] batches (spec E-1), so compare on the square letterbox.
    ref = YOLO(str(demo_cfg.checkpoint_path("detection"))).predict(
        str(path),
        imgsz=demo_cfg.detection.imgsz,
        conf=conf,
        iou=iou,
        max_det=max_det,
        device="cpu",
        verbose=False,
        rect=False,
    )[0]
    ref_rows = np.concatenate([ref.boxes.xyxy.numpy(), ref.boxes.conf.numpy()[:, None]], axis=1)

    x, info = letterbox(load_image(path), demo_cfg.detection.imgsz)
    with create_runner("torch", "detection", demo_cfg) as runner:
        raw = runner.infer(x[None])
    ours = decode_and_nms(
        raw, [info], demo_cfg.postprocess.nms, conf=conf, iou=iou, max_det=max_det
    )[0]
    assert len(ref_rows) > 0 and len(ours) == len(ref_rows)
    np.testing.assert_allclose(_canonical(ours[:, :5]), _canonical(ref_rows), atol=1e-2, rtol=1e-4)


def _canonical(rows: np.ndarray) -> np.ndarray:
    """Rows sorted by confidence, then position: tied scores may leave NMS in either order."""
    return rows[np.lexsort((rows[:, 1].round(1), rows[:, 0].round(1), -rows[:, 4].round(4)))]

"""detect -> crop -> classify -> edi_code: output schema, batched crops, engines, guards."""

from __future__ import annotations

import io

import numpy as np
import pytest
from _tiny import experiment_config, low_conf, pill_photo, tiny_class_map
from PIL import Image

from pillsnap.classmap import ClassMap
from pillsnap.exceptions import MetadataMismatchError, UserInputError
from pillsnap.pipeline import PillPrediction, Pipeline, softmax_topk

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_cfg(tmp_path_factory):
    return low_conf(experiment_config(tmp_path_factory.mktemp("pipeline")))


@pytest.fixture(scope="module")
def torch_pipeline(demo_cfg):
    with Pipeline.from_config(demo_cfg, "torch", batch_size=4) as pipe:
        yield pipe


@pytest.fixture(scope="module")
def photos():
    return [pill_photo(seed=s, width=320 - 40 * s) for s in range(3)]


class CountingRunner:
    """Wraps a runner and records each batch it is given."""

    def __init__(self, runner):
        self.runner, self.batches = runner, []

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def infer(self, batch):
        self.batches.append(batch.copy())
        return self.runner.infer(batch)


def test_predictions_have_the_documented_schema(torch_pipeline, photos, demo_cfg):
    class_map = ClassMap.load(demo_cfg.paths.class_map_path)
    results = torch_pipeline.predict(photos)
    assert len(results) == len(photos)
    assert sum(len(r) for r in results) > 0, (
        "LOW_CONF guarantees some boxes even with random weights"
    )
    for photo, pills in zip(photos, results):
        h, w = photo.shape[:2]
        assert len(pills) <= demo_cfg.postprocess.nms.max_detections
        assert [p.det_conf for p in pills] == sorted((p.det_conf for p in pills), reverse=True)
        for p in pills:
            assert isinstance(p, PillPrediction)
            x1, y1, x2, y2 = p.box
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
            assert (
                p.edi_code == class_map.edi_code(p.class_index)
                and p.name == class_map[p.class_index].name
            )
            assert len(p.top5) == min(5, len(class_map)) and p.top5[0][0] == p.class_index
            assert p.cls_conf == p.top5[0][2] and sum(t[2] for t in p.top5) <= 1 + 1e-6
            d = p.to_dict()
            assert set(d) == {
                "box",
                "det_conf",
                "class_index",
                "edi_code",
                "name",
                "cls_conf",
                "top5",
            }
            assert set(d["top5"][0]) == {"index", "edi_code", "prob"}


def test_crops_of_all_images_are_classified_together(torch_pipeline, photos):
    counting = CountingRunner(torch_pipeline.classifier)
    pipe = Pipeline(
        torch_pipeline.detector,
        counting,
        torch_pipeline.class_map,
        torch_pipeline.cfg,
        batch_size=16,
    )
    batched = pipe.predict(photos)
    total = sum(len(r) for r in batched)
    assert len(counting.batches) == -(-total // 16), (
        "one classifier call per 16 crops, across images"
    )
    counting.batches.clear()
    naive = pipe.predict(photos, batch_size=1)
    assert len(counting.batches) == total
    for a, b in zip(batched, naive):
        assert [p.class_index for p in a] == [p.class_index for p in b]
        np.testing.assert_allclose([p.cls_conf for p in a], [p.cls_conf for p in b], atol=1e-4)


def test_prepared_crops_reuse_identical_rectangles(torch_pipeline, photos):
    images = [Image.fromarray(p) if isinstance(p, np.ndarray) else p for p in photos]
    detections = [
        np.array([[10.2, 12.7, 80.4, 90.1, 0.9, 0], [30.2, 20.3, 60.4, 70.6, 0.8, 0]], np.float32),
        np.array([[5.5, 6.5, 50.5, 60.5, 0.7, 0]], np.float32),
    ]
    reuse: dict = {}
    first = torch_pipeline.prepare_crops(images[:2], detections, reuse)
    assert first.tensors.shape[0] == 3 and len(reuse) == 3
    # A sub-pixel shift inside the same whole pixels cuts the same crop: nothing new to preprocess.
    shifted = [d + np.array([0.05, 0.05, 0.05, 0.05, 0, 0], np.float32) for d in detections]
    second = torch_pipeline.prepare_crops(images[:2], shifted, reuse)
    assert len(reuse) == 3 and np.array_equal(first.tensors, second.tensors)
    moved = [d + np.array([2, 0, 2, 0, 0, 0], np.float32) for d in detections]
    torch_pipeline.prepare_crops(images[:2], moved, reuse)
    assert len(reuse) == 6
    via_halves = torch_pipeline.classify_crops(second)
    direct = torch_pipeline.classify_detections(images[:2], shifted)
    assert [[(p.box, p.class_index) for p in r] for r in via_halves] == [
        [(p.box, p.class_index) for p in r] for r in direct
    ]


def test_accepts_paths_bytes_arrays_and_pil(torch_pipeline, photos, tmp_path):
    path = tmp_path / "p.png"
    Image.fromarray(photos[0]).save(path)
    buf = io.BytesIO()
    Image.fromarray(photos[0]).save(buf, format="PNG")
    results = torch_pipeline.predict(
        [path, str(path), buf.getvalue(), photos[0], Image.fromarray(photos[0])]
    )
    boxes = [[p.box for p in r] for r in results]
    assert boxes[0] and all(len(b) == len(boxes[0]) for b in boxes)
    for b in boxes[1:]:  # the last image runs in a batch of its own: float noise only
        np.testing.assert_allclose(b, boxes[0], atol=1e-3)


def test_onnx_pipeline_matches_torch(torch_pipeline, photos, demo_cfg):
    pytest.importorskip("onnxruntime", reason="onnxruntime is needed for the ONNX pipeline")
    from pillsnap.models.export import export_models

    res = export_models(demo_cfg, demo_cfg.paths.out_dir, tag="pipe")
    with Pipeline.from_config(
        demo_cfg, "onnx", res["detection"].onnx_path, res["classification"].onnx_path
    ) as pipe:
        onnx_results = pipe.predict(photos)
    for t, o in zip(torch_pipeline.predict(photos), onnx_results):
        assert len(t) == len(o)
        np.testing.assert_allclose([p.box for p in t], [p.box for p in o], atol=0.05)
        assert [p.class_index for p in t] == [p.class_index for p in o]


def test_class_map_must_fit_the_classifier(torch_pipeline, demo_cfg):
    with pytest.raises(UserInputError, match="classification.num_classes"):
        Pipeline(torch_pipeline.detector, torch_pipeline.classifier, tiny_class_map(2), demo_cfg)


def test_class_map_digest_pinned_in_onnx_is_checked(torch_pipeline, demo_cfg):
    n = demo_cfg.classification.num_classes
    other = tiny_class_map(n)
    other.classes[0] = type(other.classes[0])(0, "c0000", "990000099", "renamed")
    torch_pipeline.classifier.metadata = {
        "pillsnap.class_map_digest": torch_pipeline.class_map.digest()
    }
    try:
        with pytest.raises(MetadataMismatchError, match="class map digest"):
            Pipeline(torch_pipeline.detector, torch_pipeline.classifier, other, demo_cfg).activate()
    finally:
        del torch_pipeline.classifier.metadata


def test_softmax_topk_is_sorted_and_normalised():
    logits = np.array([[1.0, 3.0, 2.0], [1000.0, 0.0, -1000.0]], np.float32)
    idx, probs = softmax_topk(logits, k=5)
    assert idx.tolist() == [[1, 2, 0], [0, 1, 2]]
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert np.isfinite(probs).all()

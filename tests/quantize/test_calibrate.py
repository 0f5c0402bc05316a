"""Calibration data: the shared pre-processing, stratified and seeded draws, the val-half fallback."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from _demo_release import DEMO, _val_data, demo_available

from pillsnap.config import apply_overrides, load_config
from pillsnap.exceptions import DataError
from pillsnap.preprocess import PreprocessSpec, letterbox_batch, load_image, preprocess
from pillsnap.quantize import calibrate


@pytest.fixture(scope="module")
def demo_cfg(tmp_path_factory):
    if not demo_available():
        pytest.skip("examples/synthetic/checkpoints are not trained yet")
    root = tmp_path_factory.mktemp("calibration")
    cfg = load_config(DEMO / "config.yaml", {"paths.out_dir": str(root / "runs")})
    return _val_data(cfg, root)


def test_reader_yields_exactly_the_shared_preprocessing(demo_cfg):
    for task in ("classification", "detection"):
        cal = calibrate.calibration_set(
            apply_overrides(demo_cfg, {"quantize.calibration_count": 5}), task
        )
        reader = calibrate.CalibrationReader(
            cal.paths, "x", calibrate.default_loader(demo_cfg, task), batch_size=3
        )
        batches = list(reader)
        assert [b["x"].shape[0] for b in batches] == [3, 2] and len(reader) == 2
        got = np.concatenate([b["x"] for b in batches])
        if task == "classification":
            want = preprocess(cal.paths, PreprocessSpec.from_config(demo_cfg.classification))
        else:
            want = letterbox_batch([load_image(p) for p in cal.paths], demo_cfg.detection.imgsz)[0]
        assert got.dtype == np.float32 and np.array_equal(got, want)
        # rewinding serves the same batches again (one reader for every calibration method)
        assert np.array_equal(np.concatenate([b["x"] for b in reader]), got)
        stats = reader.stats()
        assert stats["images"] == 5 and len(stats["mean"]) == 3
        assert np.allclose(stats["mean"], got.mean(axis=(0, 2, 3)), atol=1e-4)


def test_fallback_is_a_seeded_stratified_half_of_val_the_gate_leaves_out(demo_cfg):
    cfg = apply_overrides(demo_cfg, {"quantize.calibration_count": 40})
    cal = calibrate.calibration_set(cfg, "classification")
    assert cal.fallback and cal.split == "val (half)" and "half of val" in cal.notes[0]
    assert len(cal.items) == 40 and len({it.label for it in cal.items}) == 40  # one per class
    assert set(cal.paths) <= cal.reserved
    val = Path(cfg.paths.classification_data) / "val"
    total = sum(1 for _ in val.rglob("*.jpg"))
    assert abs(len(cal.reserved) - total / 2) <= 40  # half of each class, rounded up
    again = calibrate.calibration_set(cfg, "classification")
    assert again.paths == cal.paths and again.sha256 == cal.sha256
    other = calibrate.calibration_set(apply_overrides(cfg, {"quantize.seed": 1}), "classification")
    assert other.sha256 != cal.sha256
    record = cal.to_record()
    assert record["fallback"] and len(record["files"]) == 40
    assert not record["files"][0].startswith("/")  # relative: the digest holds on any machine
    det = calibrate.calibration_set(cfg, "detection")
    assert det.fallback and len({it.label for it in det.items}) >= 4  # pill-count strata


def test_a_train_split_is_used_when_present_and_its_images_never_reach_the_gate(demo_cfg, tmp_path):
    cls_root = Path(demo_cfg.paths.classification_data)
    data = tmp_path / "classification"
    data.mkdir()
    os.symlink(cls_root / "val", data / "val")
    for folder in sorted((cls_root / "val").iterdir()):
        (data / "train" / folder.name).mkdir(parents=True)
        for image in sorted(folder.iterdir())[:2]:
            os.symlink(image, data / "train" / folder.name / image.name)
    cfg = apply_overrides(
        demo_cfg, {"paths.classification_data": str(data), "quantize.calibration_count": 10}
    )
    cal = calibrate.calibration_set(cfg, "classification")
    assert not cal.fallback and cal.split == "train" and cal.reserved == frozenset(cal.paths)
    assert all("/train/" in str(p) for p in cal.paths) and len(cal.items) == 10
    # these train images are links to val files: the gate's val index leaves those out too
    from pillsnap.classmap import ClassMap
    from pillsnap.sampling.classification import index_classification

    val = index_classification(data, ClassMap.load(cfg.paths.class_map_path), "val")
    assert val.image_count - val.without(cal.reserved, "calibration").image_count == 10
    val_cfg = apply_overrides(cfg, {"quantize.calibration_split": "val"})
    cal = calibrate.calibration_set(val_cfg, "classification")
    assert cal.reserved == frozenset(cal.paths)  # val images calibrated on are left out of the gate


def test_array_reader_batches_rewinds_and_describes_in_memory_inputs():
    data = np.random.default_rng(0).random((5, 3, 4, 4), np.float32)
    reader = calibrate.CalibrationReader.from_arrays(data, "images", batch_size=2)
    batches = list(reader)
    assert [b["images"].shape[0] for b in batches] == [2, 2, 1] and len(reader) == 3
    assert np.array_equal(np.concatenate([b["images"] for b in batches]), data)
    reader.rewind()
    assert np.array_equal(reader.get_next()["images"], data[:2])  # one reader, every method
    assert reader.skipped == [] and len(reader.paths) == 5
    stats = reader.stats()
    assert stats["images"] == 5 and np.allclose(stats["mean"], data.mean(axis=(0, 2, 3)), atol=1e-4)
    with pytest.raises(DataError, match=r"\[N,3,H,W\]"):
        calibrate.CalibrationReader.from_arrays(data[0], "images")

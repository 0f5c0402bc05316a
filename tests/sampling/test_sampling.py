"""Sampling: stratified, seeded, honest about what it could not sample (no models needed)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pillsnap.classmap import ClassMap, PillClass
from pillsnap.config import CompareConfig
from pillsnap.exceptions import DataError, MissingPathError
from pillsnap.sampling.classification import index_classification
from pillsnap.sampling.detection import (
    MAX_PILL_STRATUM,
    detection_label_path,
    index_detection,
    read_yolo_labels,
)
from pillsnap.sampling.draw import sample_dataset
from pillsnap.sampling.hardness import add_hard_cases, hardness_candidates

N_CLASSES = 12


def _img(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


@pytest.fixture
def cls_tree(tmp_path: Path) -> tuple[Path, ClassMap]:
    """12 classes with 1..5 images each, plus an empty class, a broken file and an unknown folder."""
    classes = [PillClass(i, f"c{i:04d}", f"99{i:07d}", f"pill {i}") for i in range(N_CLASSES + 1)]
    root = tmp_path / "cls"
    for i in range(N_CLASSES):
        for k in range(1 + i % 5):
            _img(root / "val" / f"c{i:04d}" / f"{k}.png", 10 * i + k)
    (root / "val" / f"c{N_CLASSES:04d}").mkdir(parents=True)  # empty class folder
    (root / "val" / "c0003" / "broken.jpg").write_bytes(b"not an image")
    (root / "val" / "c0005" / "empty.jpg").write_bytes(b"")
    _img(root / "val" / "stranger" / "0.png", 1)
    return root, ClassMap(classes)


def _cfg(**kw) -> CompareConfig:
    return CompareConfig(**kw)


def test_index_reports_empty_unknown_and_missing(cls_tree):
    root, cmap = cls_tree
    index = index_classification(root, cmap)
    assert len(index.groups) == N_CLASSES
    assert index.empty_classes == [f"c{N_CLASSES:04d}"]
    assert any("stranger" in n for n in index.notes)
    assert any("empty" in n for n in index.notes)


def test_smoke_is_stratified_seeded_and_reproducible(cls_tree):
    root, cmap = cls_tree
    index = index_classification(root, cmap)
    a = sample_dataset(index, _cfg(mode="smoke", sample_count=8, seed=1), "classification")
    b = sample_dataset(index, _cfg(mode="smoke", sample_count=8, seed=1), "classification")
    c = sample_dataset(index, _cfg(mode="smoke", sample_count=8, seed=2), "classification")
    assert [it.path for it in a.items] == [it.path for it in b.items]
    assert [it.path for it in a.items] != [it.path for it in c.items]
    assert a.sampled_images == 8 and a.sampled_classes == 8  # one per class while classes last
    assert all(it.path.parent.name == f"c{it.label:04d}" for it in a.items)


def test_smoke_larger_than_dataset_says_why(cls_tree):
    root, cmap = cls_tree
    index = index_classification(root, cmap)
    s = sample_dataset(index, _cfg(mode="smoke", sample_count=100), "classification")
    readable = index.image_count - 2
    assert s.sampled_images == readable
    assert max(Counter(it.label for it in s.items).values()) == 5
    assert any(f"dataset has only {index.image_count} images" in n for n in s.notes)
    assert {Path(k.path).name for k in s.skipped} == {"broken.jpg", "empty.jpg"}
    assert all(k.reason for k in s.skipped)


def test_coverage_balances_classes_and_respects_limits(cls_tree):
    root, cmap = cls_tree
    index = index_classification(root, cmap)
    s = sample_dataset(
        index, _cfg(mode="coverage", per_class_k=2, min_classes=5, max_total=10), "classification"
    )
    counts = Counter(it.label for it in s.items)
    assert s.sampled_images <= 10 and len(counts) == 5 and set(counts.values()) <= {1, 2}
    s = sample_dataset(
        index,
        _cfg(mode="coverage", per_class_k=1, min_classes=1000, max_total=5000),
        "classification",
    )
    assert s.sampled_classes == N_CLASSES
    assert any(f"dataset has only {N_CLASSES} classes" in n for n in s.notes)
    s = sample_dataset(
        index, _cfg(mode="coverage", per_class_k=3, min_classes=6, max_total=12), "classification"
    )
    assert s.sampled_classes == 6 and any("per_class_k lowered from 3 to 2" in n for n in s.notes)


def test_full_lists_everything(cls_tree):
    root, cmap = cls_tree
    index = index_classification(root, cmap)
    s = sample_dataset(index, _cfg(mode="full"), "classification")
    assert s.sampled_images == index.image_count and s.sampled_classes == N_CLASSES
    assert hardness_candidates(index, s, _cfg(mode="full")) == []


def test_no_readable_image_is_a_data_error(tmp_path):
    cmap = ClassMap([PillClass(0, "c0000", "990000000", "p")])
    (tmp_path / "val" / "c0000").mkdir(parents=True)
    (tmp_path / "val" / "c0000" / "a.jpg").write_bytes(b"junk")
    with pytest.raises(DataError, match="readable"):
        sample_dataset(index_classification(tmp_path, cmap), _cfg(mode="smoke"), "classification")
    with pytest.raises(MissingPathError, match="paths.classification_data"):
        index_classification(tmp_path / "nowhere", cmap)


def test_hardness_bins_add_cases_per_bin(cls_tree):
    root, cmap = cls_tree
    index = index_classification(root, cmap)
    cfg = _cfg(mode="smoke", sample_count=4, hard_per_bin=1, hardness_bins=[0.0, 0.5, 0.9, 1.0])
    s = sample_dataset(index, cfg, "classification")
    cands = hardness_candidates(index, s, cfg)
    assert cands and not ({c.path for c in cands} & {it.path for it in s.items})
    probs = np.linspace(0.1, 0.8, len(cands))  # nothing in the top bin
    added = add_hard_cases(s, cands, probs, cfg)
    assert len(added) == 2 and s.sampled_images == 6
    assert s.hardness["hard[0.90,1.00]"] == {"candidates": 0, "added": 0}
    assert any("hard[0.90,1.00]" in n for n in s.notes)
    assert {it.source for it in added} == {"hard[0.00,0.50)", "hard[0.50,0.90)"}


@pytest.fixture
def det_data(tmp_path: Path) -> Path:
    img_dir, lab_dir = tmp_path / "images" / "val", tmp_path / "labels" / "val"
    lab_dir.mkdir(parents=True)
    for i in range(9):
        _img(img_dir / f"{i}.jpg", 20 * i)
        if i:  # photo 0 has no label file: a background photo
            (lab_dir / f"{i}.txt").write_text("".join("0 0.5 0.5 0.2 0.2\n" for _ in range(i)))
    (lab_dir / "8.txt").write_text("0 0.5 oops\n")
    (tmp_path / "data.yaml").write_text(
        yaml.safe_dump({"path": ".", "val": "images/val", "names": {0: "pill"}})
    )
    return tmp_path / "data.yaml"


def test_detection_is_stratified_by_pill_count(det_data):
    assert detection_label_path(Path("/d/images/val/x.jpg")) == Path("/d/labels/val/x.txt")
    assert len(read_yolo_labels(det_data.parent / "images" / "val" / "0.jpg")) == 0
    index = index_detection(det_data)
    assert [Path(s.path).name for s in index.skipped] == ["8.jpg"]
    assert sorted(index.groups) == list(range(MAX_PILL_STRATUM + 1))
    assert len(index.groups[MAX_PILL_STRATUM]) == 3  # 5, 6, 7 pills
    s = sample_dataset(index, _cfg(mode="smoke", detection_sample_count=6), "detection")
    assert s.sampled_classes == 6 and s.sampled_images == 6

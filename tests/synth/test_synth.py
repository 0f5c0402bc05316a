"""Tests for pillsnap.synth: the seeded generator, its outputs, its CLI; crop_box."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from pillsnap.classmap import ClassMap
from pillsnap.exceptions import DataError, UserInputError
from pillsnap.preprocess import crop_box
from pillsnap.synth import generate_dataset
from pillsnap.synth.classes import COLOURS, EDI_CODE_RANGE, make_class_specs

TINY = {"num_classes": 12, "train_photos": 4, "val_photos": 3}


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "synth.json"
    }  # synth.json records the wall time


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("synth") / "data"
    return out, generate_dataset(out, seed=0, **TINY)


def test_same_seed_gives_identical_files(tiny, tmp_path):
    out, _ = tiny
    again = generate_dataset(tmp_path / "again", seed=0, **TINY)
    first, second = _files(out), _files(Path(again.out_dir))
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []
    assert any(k.endswith(".jpg") for k in first) and any(k.endswith(".txt") for k in first)


def test_different_seed_gives_different_photos(tiny, tmp_path):
    out, _ = tiny
    other = _files(Path(generate_dataset(tmp_path / "seed1", seed=1, **TINY).out_dir))
    first = _files(out)
    photos = [k for k in first if k.startswith("detection/images/") and k in other]
    labels = [k for k in first if k.startswith("detection/labels/") and k in other]
    assert photos and all(first[k] != other[k] for k in photos)
    assert any(first[k] != other[k] for k in labels)


def test_val_split_does_not_depend_on_train(tiny, tmp_path):
    out, _ = tiny
    val_only = generate_dataset(tmp_path / "val_only", seed=0, splits=["val"], **TINY)
    assert val_only.photos == {"val": TINY["val_photos"]}
    full, alone = _files(out), _files(Path(val_only.out_dir))
    val_keys = [k for k in full if "/val" in k or k.startswith("classification/val")]
    assert val_keys and all(full[k] == alone[k] for k in val_keys)
    assert not (Path(val_only.out_dir) / "detection" / "images" / "train").exists()


def test_class_map_is_valid_and_synthetic(tiny):
    out, summary = tiny
    cm = ClassMap.load(out / "class_map.json")
    assert len(cm) == summary.num_classes == TINY["num_classes"]
    codes = [c.edi_code for c in cm.classes]
    assert len(set(codes)) == len(codes)
    assert all(
        len(c) == 9 and c.isdigit() and EDI_CODE_RANGE[0] <= c <= EDI_CODE_RANGE[1] for c in codes
    )
    assert cm.header["synthetic"] is True and cm.header["edi_code_range"] == list(EDI_CODE_RANGE)
    assert sorted(d.name for d in (out / "classification" / "train").iterdir()) == [
        c.class_dir for c in cm.classes
    ]


def test_default_classes_differ_in_shape_and_colour():
    specs = make_class_specs(40, seed=0)
    assert len({(s.shape, s.colors[0]) for s in specs}) == 40
    assert len({s.colors[0] for s in specs}) >= 8 and len(COLOURS) >= 8
    assert {s.shape for s in specs} == {"round", "oval", "oblong", "capsule"}
    assert any(len(s.colors) == 2 for s in specs)  # two-tone capsules
    assert len({s.imprint for s in specs}) == 40


def test_yolo_labels_are_normalised_single_class(tiny):
    out, summary = tiny
    data_yaml = (out / "detection" / "data.yaml").read_text()
    assert "nc: 1" in data_yaml and "0: pill" in data_yaml
    n_boxes = 0
    for split, count in summary.photos.items():
        labels = sorted((out / "detection" / "labels" / split).glob("*.txt"))
        images = sorted((out / "detection" / "images" / split).glob("*.jpg"))
        assert len(labels) == len(images) == count
        for lbl in labels:
            rows = [line.split() for line in lbl.read_text().splitlines()]
            assert 1 <= len(rows) <= 6
            for row in rows:
                assert row[0] == "0" and len(row) == 5
                cx, cy, w, h = map(float, row[1:])
                assert 0 < w <= 1 and 0 < h <= 1
                assert 0 <= cx - w / 2 and cx + w / 2 <= 1 and 0 <= cy - h / 2 and cy + h / 2 <= 1
            n_boxes += len(rows)
    assert n_boxes == sum(summary.boxes.values())


def test_one_crop_per_box_with_the_box_size(tiny):
    out, summary = tiny
    for split in summary.photos:
        crops = sorted((out / "classification" / split).glob("*/*.jpg"))
        assert len(crops) == summary.crops[split] == summary.boxes[split]
        # crop `<photo>_<k>.jpg` is box k of that photo, cut with padding 0
        crop = crops[0]
        stem, k = crop.stem.rsplit("_", 1)
        photo = Image.open(out / "detection" / "images" / split / f"{stem}.jpg")
        _, _cx, _cy, w, h = map(
            float,
            (out / "detection" / "labels" / split / f"{stem}.txt")
            .read_text()
            .splitlines()[int(k)]
            .split(),
        )
        W, H = photo.size
        assert (
            abs(Image.open(crop).size[0] - w * W) <= 2
            and abs(Image.open(crop).size[1] - h * H) <= 2
        )


def test_non_empty_folder_is_refused_without_force(tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserInputError, match="--force"):
        generate_dataset(out, **TINY)
    summary = generate_dataset(out, force=True, **TINY)
    assert summary.photos["train"] == TINY["train_photos"] and (out / "keep.txt").exists()


def test_cli_generates_and_refuses(tmp_path, capsys):
    from pillsnap.cli import main

    out = tmp_path / "cli"
    args = [
        "synth",
        "--out",
        str(out),
        "--classes",
        "5",
        "--train-photos",
        "2",
        "--val-photos",
        "1",
        "--quiet",
    ]
    assert main(args) == 0
    assert "2 photos" in capsys.readouterr().out
    assert main(args) == 2
    assert "non-empty" in capsys.readouterr().err


@pytest.mark.slow
def test_many_classes_crops_only(tmp_path):
    # The scale mode (`--classes 5000 --no-detection`) at 1000 classes: 5000 take ~30 s of CPU.
    n = 1000
    summary = generate_dataset(
        tmp_path / "many", num_classes=n, splits=["val"], detection=False, crops_per_class=1
    )
    root = Path(summary.out_dir)
    dirs = sorted((root / "classification" / "val").iterdir())
    assert len(dirs) == n and all(len(list(d.iterdir())) == 1 for d in dirs)
    assert summary.crops == {"val": n} and not (root / "detection").exists()
    cm = ClassMap.load(root / "class_map.json")
    assert [d.name for d in dirs] == [c.class_dir for c in cm.classes]
    assert len({c.edi_code for c in cm.classes}) == n


def test_crop_box_pads_and_clips():
    img = Image.new("RGB", (100, 80))
    assert crop_box(img, (10, 20, 30, 60), 0.0).size == (20, 40)
    assert crop_box(img, (10, 20, 30, 60), 0.25).size == (30, 60)  # 5 px / 10 px per side
    assert crop_box(img, (90.5, 70.2, 100, 80), 0.5).size == (15, 15)  # clipped at the border
    with pytest.raises(DataError, match="empty"):
        crop_box(img, (30, 20, 10, 60), 0.0)


def test_list_split_rejects_unknown_class_folders(tiny):
    from pillsnap.synth.train_classifier import list_split

    out, _ = tiny
    cm = ClassMap.load(out / "class_map.json")
    items = list_split(out / "classification", "val", cm)
    assert items and all(0 <= y < len(cm) for _, y in items)
    smaller = ClassMap(cm.classes[:-1], cm.header)
    with pytest.raises(DataError, match="not in the class map"):
        list_split(out / "classification", "val", smaller)


@pytest.mark.slow
def test_train_fixtures_classifier_round_trip(tiny, tmp_path):
    """One short epoch of a tiny timm model through the real training and recording path."""
    import json

    from pillsnap.config import load_config
    from pillsnap.models.classifier import load_classification_model
    from pillsnap.synth.train import QUALITY_FILE, train_fixtures
    from pillsnap.synth.train_classifier import ClassifierTrainSpec

    out, summary = tiny
    exp = tmp_path / "exp"
    exp.mkdir()
    overrides = {
        "paths.exp_dir": str(exp),
        "paths.classification_data": str(out / "classification"),
        "classification.backbone": "mobilenetv3_small_050",
        "classification.num_classes": summary.num_classes,
        "classification.img_size": 32,
    }
    cfg = load_config(Path(__file__).parents[2] / "examples/synthetic/config.yaml", overrides)
    spec = ClassifierTrainSpec(epochs=1, batch=8, threads=1)
    quality = train_fixtures(cfg, ["classification"], cls_spec=spec, command="test")
    record = json.loads((exp / QUALITY_FILE).read_text())["classification"]
    assert record == json.loads(json.dumps(quality["classification"]))
    assert 0.0 <= record["metrics"]["top1"] <= 1.0 and record["metrics"]["val_images"] > 0
    assert record["passed"] == (record["metrics"]["top1"] >= 0.9) and record["command"] == "test"
    assert (exp / "class_map.json").read_bytes() == (out / "class_map.json").read_bytes()
    model = load_classification_model(cfg)  # the release loader accepts the fp16 checkpoint
    assert model.training is False

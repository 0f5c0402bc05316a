"""Test helpers for the model / export / runner / pipeline tests.

``experiment_config`` returns the embedded demo experiment (``examples/synthetic``)
when its trained checkpoints are present, otherwise a tiny random-weight
experiment built in a temporary folder (yolo11n at 160 px, tf_efficientnetv2_b0 at
64 px, 5 classes), so these tests run before and after the fixture exists.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

from pillsnap.classmap import ClassMap, PillClass
from pillsnap.config import Config, apply_overrides, load_config

DEMO = Path(__file__).resolve().parents[1] / "examples" / "synthetic"
TINY = {
    "detection": {"architecture": "yolo11n", "imgsz": 160, "num_classes": 1},
    "classification": {"backbone": "tf_efficientnetv2_b0", "num_classes": 5, "img_size": 64},
}
# Low cut so that even random detector weights yield boxes to crop and classify.
# A comparison small enough for a test that runs the real CLI on the demo experiment.
SMALL_COMPARE_ARGS = [
    "--set",
    "compare.sample_count=16",
    "--set",
    "compare.detection_sample_count=8",
    "--set",
    "compare.hard_per_bin=1",
]
LOW_CONF = {"postprocess.nms.conf_threshold": 0.001, "postprocess.nms.max_detections": 4}


def demo_available() -> bool:
    ckpts = DEMO / "checkpoints"
    return (
        (DEMO / "config.yaml").exists()
        and (ckpts / "detection_best.pt").exists()
        and (ckpts / "classification_best.pt").exists()
    )


def experiment_config(root: Path) -> Config:
    """The demo experiment if trained, else a tiny random one under ``root``; outputs go to ``root/runs``."""
    if demo_available():
        return load_config(DEMO / "config.yaml", {"paths.out_dir": str(root / "runs")})
    return build_tiny_experiment(root)


def build_tiny_experiment(root: Path, seed: int = 0) -> Config:
    """Random-weight checkpoints, a class map and ``config.yaml`` under ``root``."""
    import torch

    from pillsnap.models.classifier import (
        build_classification_model,
        save_classification_checkpoint,
    )
    from pillsnap.models.detector import build_detection_model, save_detection_checkpoint

    torch.manual_seed(seed)
    det, cls = TINY["detection"], TINY["classification"]
    ckpts = root / "checkpoints"
    save_detection_checkpoint(
        ckpts / "detection_best.pt", build_detection_model(det["architecture"], 1), det["imgsz"]
    )
    model = build_classification_model(cls["backbone"], cls["num_classes"])
    save_classification_checkpoint(
        ckpts / "classification_best.pt",
        model,
        {"backbone": cls["backbone"], "num_classes": cls["num_classes"]},
    )
    tiny_class_map(cls["num_classes"]).save(root / "class_map.json")
    raw = {"paths": {"exp_dir": ".", "out_dir": "runs"}, **TINY}
    (root / "config.yaml").write_text(yaml.safe_dump(raw))
    return load_config(root / "config.yaml")


def tiny_class_map(n: int) -> ClassMap:
    return ClassMap(
        [PillClass(i, f"c{i:04d}", f"99{i:07d}", f"pill {i}") for i in range(n)],
        {"synthetic": True},
    )


def low_conf(cfg: Config) -> Config:
    return apply_overrides(cfg, LOW_CONF)


def pill_photo(width: int = 320, height: int = 240, pills: int = 3, seed: int = 0) -> np.ndarray:
    """An RGB uint8 photo of a few coloured ellipses on a textured background."""
    rng = np.random.default_rng(seed)
    bg = rng.integers(90, 140, size=(height, width, 3), dtype=np.uint8)
    img = Image.fromarray(bg, "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(pills):
        w, h = int(rng.integers(30, 60)), int(rng.integers(20, 45))
        x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        draw.ellipse([x, y, x + w, y + h], fill=colour, outline=(20, 20, 20), width=2)
    return np.asarray(img)


def write_photos(folder: Path, count: int, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"photo_{i}.jpg"
        Image.fromarray(pill_photo(seed=seed + i, width=320 - 16 * i, height=240 + 8 * i)).save(
            path, quality=92
        )
        paths.append(path)
    return paths


def python3_notebook(*sources: str, parameters: str):
    """A notebook on the stock ``python3`` kernel: a tagged parameters cell, then ``sources``."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = [
        nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]}),
        *(nbformat.v4.new_code_cell(src) for src in sources),
    ]
    return nb


def write_tiny_data(root: Path, class_map: ClassMap, photos: int = 2) -> dict[str, str]:
    """A minimal val split for the tiny experiment: one crop per class, a few labelled photos.

    Returns the ``paths.*`` overrides pointing at it (what a preflight needs to find readable
    images; the comparisons themselves use the demo's data).
    """
    for c in class_map.classes:
        folder = root / "classification" / "val" / c.class_dir
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pill_photo(64, 64, pills=1, seed=c.index)).save(folder / "0.jpg")
    images = root / "detection" / "images" / "val"
    labels = root / "detection" / "labels" / "val"
    labels.mkdir(parents=True, exist_ok=True)
    for path in write_photos(images, photos):
        (labels / f"{path.stem}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    data_yaml = root / "detection" / "data.yaml"
    data_yaml.write_text(
        yaml.safe_dump({"path": str(root / "detection"), "val": "images/val", "names": ["pill"]})
    )
    return {
        "detection_data": str(data_yaml),
        "classification_data": str(root / "classification"),
    }


_TINY_CACHE: dict[str, Path] = {}


def tiny_release_inputs(factory) -> Path:
    """One tiny experiment (checkpoints, class map) and val data per session, under
    ``<root>/exp`` and ``<root>/data``; tests link to it instead of rebuilding."""
    if "root" not in _TINY_CACHE:
        root = factory.mktemp("tiny-release")
        build_tiny_experiment(root / "exp")
        write_tiny_data(root / "data", ClassMap.load(root / "exp" / "class_map.json"))
        _TINY_CACHE["root"] = root
    return _TINY_CACHE["root"]


def tiny_project_config(factory, root: Path) -> dict:
    """``root/exp`` linked to the session's tiny experiment (checkpoints, class map) and the
    config sections that point at it and its val data (``paths``, the tiny model sizes)."""
    import shutil

    tiny = tiny_release_inputs(factory)
    exp = root / "exp"
    (exp / "checkpoints").mkdir(parents=True)
    for task in ("detection", "classification"):
        name = f"{task}_best.pt"
        (exp / "checkpoints" / name).symlink_to(tiny / "exp" / "checkpoints" / name)
    shutil.copy(tiny / "exp" / "class_map.json", exp / "class_map.json")
    return {
        "paths": {
            "exp_dir": "exp",
            "out_dir": "runs",
            "detection_data": str(tiny / "data" / "detection" / "data.yaml"),
            "classification_data": str(tiny / "data" / "classification"),
        },
        **{k: dict(v) for k, v in TINY.items()},
    }

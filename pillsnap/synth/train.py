"""Training and measuring the fixture models of the demo experiment, end to end.

``train_fixtures`` reads everything from the demo config (data paths, checkpoint
names, classifier size and preprocessing), trains the requested models, measures
them on the synthetic val split and records the result, with the commands and
timings, in ``{exp_dir}/fixture_quality.json``. A model that misses its quality bar
is still saved and recorded (``passed: false``) so the numbers can be inspected.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
from collections.abc import Iterable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from pillsnap.classmap import ClassMap
from pillsnap.config import Config, require_path
from pillsnap.exceptions import UserInputError
from pillsnap.fileio import save_json
from pillsnap.synth.train_classifier import (
    ClassifierTrainSpec,
    evaluate_classifier,
    list_split,
    train_classifier,
)
from pillsnap.synth.train_detector import DetectorTrainSpec, evaluate_detector, train_detector

log = logging.getLogger(__name__)
TASKS = ("detection", "classification")
REQUIREMENTS = {
    "detection_map50": 0.90,
    "detection_map50_95": 0.60,
    "classification_top1": 0.90,
    "committed_mb_max": 30.0,
}
QUALITY_FILE = "fixture_quality.json"


def install_class_map(cfg: Config) -> ClassMap:
    """Copy the data set's class map into the experiment (the release reads it there)."""
    data_root = require_path(
        cfg.paths.classification_data, "paths.classification_data", "the classification data"
    )
    source = require_path(
        Path(data_root).parent / "class_map.json",
        "paths.classification_data",
        "the class map written by `pillsnap synth` next to classification/",
    )
    class_map = ClassMap.load(source)
    target = cfg.paths.class_map_path
    if not target.exists() or ClassMap.load(target).digest() != class_map.digest():
        shutil.copyfile(source, target)
        log.info("class map %s -> %s", source, target)
    return class_map


def train_fixtures(
    cfg: Config,
    tasks: Iterable[str] = TASKS,
    det_spec: DetectorTrainSpec | None = None,
    cls_spec: ClassifierTrainSpec | None = None,
    workdir: str | Path = "yolo_runs",
    command: str = "",
    eval_only: bool = False,
) -> dict[str, Any]:
    """Train (unless ``eval_only``) and measure; returns the updated quality record."""
    tasks = tuple(tasks)
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise UserInputError(f"unknown task(s) {bad}; expected some of {list(TASKS)}")
    cls_spec = cls_spec or ClassifierTrainSpec()
    # the config names the detector's architecture and input size; the spec only trains it
    det_spec = replace(
        det_spec or DetectorTrainSpec(),
        architecture=f"{cfg.detection.architecture}.yaml",
        imgsz=cfg.detection.imgsz,
    )
    class_map = install_class_map(cfg)
    quality = load_quality(cfg)
    quality["data"] = _data_record(cfg)
    for task in tasks:
        ckpt = cfg.checkpoint_path(task, must_exist=eval_only)
        record: dict[str, Any] = dict(quality.get(task, {})) if eval_only else {}
        if task == "detection":
            data_yaml = require_path(
                cfg.paths.detection_data, "paths.detection_data", "the detection data YAML"
            )
            if not eval_only:
                record = {
                    "spec": asdict(det_spec),
                    **train_detector(data_yaml, ckpt, det_spec, workdir),
                }
            record["metrics"] = evaluate_detector(ckpt, data_yaml, cfg.detection.imgsz, workdir)
            record["passed"] = (
                record["metrics"]["map50"] >= REQUIREMENTS["detection_map50"]
                and record["metrics"]["map50_95"] >= REQUIREMENTS["detection_map50_95"]
            )
        else:
            if not eval_only:
                record = {
                    "spec": asdict(cls_spec),
                    **train_classifier(cfg, class_map, ckpt, cls_spec),
                }
            record["metrics"] = _measure_classifier(cfg, class_map)
            record["passed"] = record["metrics"]["top1"] >= REQUIREMENTS["classification_top1"]
        record["eval_command" if eval_only else "command"] = command
        record["checkpoint"] = str(ckpt.relative_to(cfg.paths.exp_dir))
        quality[task] = record
        log.info("%s: %s (passed: %s)", task, record["metrics"], record["passed"])
    quality["requirements"] = REQUIREMENTS
    quality["sizes_mb"] = _sizes_mb(cfg)
    quality["environment"] = _environment()
    quality["passed"] = (
        all(quality.get(t, {}).get("passed", False) for t in TASKS)
        and quality["sizes_mb"]["total"] <= REQUIREMENTS["committed_mb_max"]
    )
    save_json(cfg.paths.exp_dir / QUALITY_FILE, quality)
    return quality


def load_quality(cfg: Config) -> dict[str, Any]:
    path = cfg.paths.exp_dir / QUALITY_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def _measure_classifier(cfg: Config, class_map: ClassMap) -> dict[str, Any]:
    """Reload the saved (fp16) checkpoint with the release's loader and measure val top-1."""
    import time

    from pillsnap.models.classifier import load_classification_model
    from pillsnap.preprocess import PreprocessSpec

    start = time.perf_counter()
    model = load_classification_model(cfg)
    items = list_split(Path(cfg.paths.classification_data), "val", class_map)
    metrics = evaluate_classifier(model, items, PreprocessSpec.from_config(cfg.classification))
    return {**metrics, "val_seconds": round(time.perf_counter() - start, 1)}


def _data_record(cfg: Config) -> dict[str, Any]:
    synth = Path(cfg.paths.classification_data).parent / "synth.json"
    params = json.loads(synth.read_text())["parameters"] if synth.exists() else {}
    return {"synth_parameters": params, "command": _synth_command(params)}


def _synth_command(p: dict[str, Any]) -> str:
    if not p:
        return ""
    return (
        f"pillsnap synth --out data/synthetic --classes {p['num_classes']} --seed {p['seed']} "
        f"--train-photos {p['train_photos']} --val-photos {p['val_photos']}"
    )


def _sizes_mb(cfg: Config) -> dict[str, float]:
    files = {
        "detection": cfg.checkpoint_path("detection", must_exist=False),
        "classification": cfg.checkpoint_path("classification", must_exist=False),
        "class_map": cfg.paths.class_map_path,
    }
    sizes = {k: round(p.stat().st_size / 1e6, 2) if p.exists() else 0.0 for k, p in files.items()}
    sizes["total"] = round(sum(sizes.values()), 2)
    return sizes


def _environment() -> dict[str, Any]:
    import timm
    import torch
    import ultralytics

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "ultralytics": ultralytics.__version__,
        "cpu_count": os.cpu_count(),
        "device": "cpu",
    }

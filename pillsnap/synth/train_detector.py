"""Training the fixture detector: Ultralytics YOLO11n from scratch on the synthetic photos.

No pretrained weights and nothing fetched: ``pretrained=False``, ``amp=False`` (the AMP
check downloads a model), ``plots=False`` (plots fetch a font). The result is an
ordinary Ultralytics checkpoint, so the release code treats it like a real one.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from pillsnap.fileio import ensure_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectorTrainSpec:
    """Every knob of the detector run; recorded in fixture_quality.json."""

    architecture: str = "yolo11n.yaml"
    imgsz: int = 320
    epochs: int = 22
    batch: int = 16
    workers: int = 2
    seed: int = 0
    close_mosaic: int = 6
    cache: str = "ram"


def train_detector(
    data_yaml: str | Path,
    out_ckpt: str | Path,
    spec: DetectorTrainSpec,
    workdir: str | Path = "yolo_runs",
) -> dict:
    """Train, copy the stripped ``best.pt`` to ``out_ckpt``; returns timings and paths."""
    from ultralytics import YOLO

    import pillsnap  # noqa: F401  (sets YOLO_OFFLINE before ultralytics is imported)
    from pillsnap.models.common import keep_torch_threads

    start = time.perf_counter()
    model = YOLO(spec.architecture)
    with keep_torch_threads():
        model.train(
            data=str(Path(data_yaml).resolve()),
            epochs=spec.epochs,
            imgsz=spec.imgsz,
            batch=spec.batch,
            workers=spec.workers,
            seed=spec.seed,
            deterministic=True,
            pretrained=False,
            plots=False,
            amp=False,
            device="cpu",
            project=str(Path(workdir).resolve()),
            name="detector",
            exist_ok=True,
            close_mosaic=spec.close_mosaic,
            cache=spec.cache,
            val=True,
            verbose=False,
        )
    best = Path(model.trainer.best)
    ensure_dir(Path(out_ckpt).parent)
    shutil.copyfile(best, out_ckpt)
    seconds = time.perf_counter() - start
    log.info("detector trained in %.0f s; %s -> %s", seconds, best, out_ckpt)
    return {
        "train_seconds": round(seconds, 1),
        "run_dir": str(best.parent.parent),
        "checkpoint": str(out_ckpt),
    }


def evaluate_detector(
    ckpt: str | Path, data_yaml: str | Path, imgsz: int, workdir: str | Path = "yolo_runs"
) -> dict:
    """Ultralytics val on the val split: mAP@0.5 and mAP@0.5:0.95 of the saved checkpoint."""
    from ultralytics import YOLO

    import pillsnap  # noqa: F401
    from pillsnap.models.common import keep_torch_threads

    start = time.perf_counter()
    with keep_torch_threads():
        metrics = YOLO(str(ckpt)).val(
            data=str(Path(data_yaml).resolve()),
            imgsz=imgsz,
            batch=16,
            device="cpu",
            plots=False,
            workers=0,
            project=str(Path(workdir).resolve()),
            name="detector_val",
            exist_ok=True,
            verbose=False,
        )
    return {
        "map50": round(float(metrics.box.map50), 4),
        "map50_95": round(float(metrics.box.map), 4),
        "precision": round(float(metrics.box.mp), 4),
        "recall": round(float(metrics.box.mr), 4),
        "val_seconds": round(time.perf_counter() - start, 1),
    }

"""Detection -> crop -> classification -> edi_code, for any pair of runners.

Images are processed ``batch_size`` at a time: one letterboxed detector batch, then
the crops of ALL those images are classified together in batches of
``batch_size`` (one classifier call per batch, not one per pill), which is what
makes the pipeline fast on photos holding several pills.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Self

import numpy as np

from pillsnap.exceptions import MetadataMismatchError, UserInputError
from pillsnap.postprocess import decode_and_nms
from pillsnap.preprocess import (
    ImageLike,
    PreprocessSpec,
    crop_rect,
    letterbox_batch,
    load_image,
    preprocess,
    preprocess_one,
)

if TYPE_CHECKING:
    from PIL import Image

    from pillsnap.classmap import ClassMap
    from pillsnap.config import Config
    from pillsnap.engines.runners import Runner

log = logging.getLogger(__name__)
TOP_K = 5


@dataclass(frozen=True)
class ClassScore:
    """One classified image or crop: best class and the top-5 ``(index, edi_code, prob)``."""

    class_index: int
    edi_code: str
    name: str
    conf: float
    top5: list[tuple[int, str, float]] = field(default_factory=list)


@dataclass(frozen=True)
class PillPrediction:
    """One detected pill: box in original pixels, detector and classifier confidences."""

    box: tuple[float, float, float, float]
    det_conf: float
    class_index: int
    edi_code: str
    name: str
    cls_conf: float
    top5: list[tuple[int, str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["box"] = [round(v, 2) for v in self.box]
        d["det_conf"], d["cls_conf"] = round(self.det_conf, 6), round(self.cls_conf, 6)
        d["top5"] = [{"index": i, "edi_code": e, "prob": round(p, 6)} for i, e, p in self.top5]
        return d


def softmax_topk(logits: np.ndarray, k: int = TOP_K) -> tuple[np.ndarray, np.ndarray]:
    """Softmax over classes (in float64, stable) -> top-k indices and probabilities, best first."""
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    probs = z / z.sum(axis=1, keepdims=True)
    k = min(k, probs.shape[1])
    idx = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return idx, np.take_along_axis(probs, idx, axis=1)


def scores_from_logits(logits: np.ndarray, class_map: ClassMap) -> list[ClassScore]:
    """Classifier logits ``[N, classes]`` -> one ``ClassScore`` per row."""
    if logits.shape[1] != len(class_map):
        raise MetadataMismatchError(
            f"the classifier outputs {logits.shape[1]} classes but the class map has "
            f"{len(class_map)}; use the class map the model was trained with"
        )
    out: list[ClassScore] = []
    idx, probs = softmax_topk(logits)
    for row_idx, row_p in zip(idx, probs):
        top = [(int(i), class_map.edi_code(int(i)), float(p)) for i, p in zip(row_idx, row_p)]
        best = class_map[top[0][0]]
        out.append(ClassScore(best.index, best.edi_code, best.name, top[0][2], top))
    return out


def classify_images(
    runner: Runner,
    images: Sequence[ImageLike],
    spec: PreprocessSpec,
    class_map: ClassMap,
    batch_size: int = 16,
) -> list[ClassScore]:
    """Classify images (or crops) ``batch_size`` at a time with the one ``preprocess``."""
    out: list[ClassScore] = []
    for start in range(0, len(images), batch_size):
        logits = runner.infer(preprocess(images[start : start + batch_size], spec))
        out.extend(scores_from_logits(logits, class_map))
    return out


def detect_images(
    runner: Runner, images: Sequence[np.ndarray | Image.Image], cfg: Config, batch_size: int = 16
) -> list[np.ndarray]:
    """Letterbox, run the detector, NMS: per image ``[k, 6]`` in original pixels."""
    out: list[np.ndarray] = []
    for start in range(0, len(images), batch_size):
        batch, infos = letterbox_batch(images[start : start + batch_size], cfg.detection.imgsz)
        out.extend(decode_and_nms(runner.infer(batch), infos, cfg.postprocess.nms))
    return out


@dataclass(frozen=True)
class PreparedCrops:
    """Detections kept per image (non-empty boxes) and their crops as one classifier batch."""

    detections: list[np.ndarray]
    tensors: np.ndarray
    """``[total crops, 3, crop, crop]`` float32, in the order of ``detections``."""


class Pipeline:
    """The two-stage recogniser over a detector runner and a classifier runner."""

    def __init__(
        self,
        detector: Runner,
        classifier: Runner,
        class_map: ClassMap,
        cfg: Config,
        batch_size: int = 16,
    ):
        if len(class_map) != cfg.classification.num_classes:
            raise UserInputError(
                f"the class map has {len(class_map)} classes, classification.num_classes is "
                f"{cfg.classification.num_classes}; point paths.class_map at the model's class map"
            )
        self.detector, self.classifier, self.class_map, self.cfg = (
            detector,
            classifier,
            class_map,
            cfg,
        )
        self.batch_size = batch_size
        self.spec = PreprocessSpec.from_config(cfg.classification)
        self._digest = class_map.digest()

    @classmethod
    def from_config(
        cls,
        cfg: Config,
        engine: Literal["torch", "onnx", "tensorrt"],
        detection_model: str | Path | None = None,
        classification_model: str | Path | None = None,
        batch_size: int = 16,
    ) -> Pipeline:
        """Runners of one engine (checkpoints from the config for torch) and the configured class map."""
        from pillsnap.classmap import ClassMap
        from pillsnap.engines.runners import create_runner
        from pillsnap.preprocess import apply_image_limits

        apply_image_limits(cfg)  # the one pixel limit (`images.max_pixels`) for every photo
        detector = create_runner(engine, "detection", cfg, detection_model)
        classifier = create_runner(engine, "classification", cfg, classification_model)
        return cls(detector, classifier, ClassMap.load(cfg.paths.class_map_path), cfg, batch_size)

    def activate(self) -> Self:
        self.detector.activate()
        self.classifier.activate()
        self._check_class_map_digest()
        return self

    def close(self) -> None:
        self.detector.deactivate()
        self.classifier.deactivate()

    def __enter__(self) -> Self:
        return self.activate()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_class_map_digest(self) -> None:
        from pillsnap.models.common import META_CLASS_MAP_DIGEST

        pinned = getattr(self.classifier, "metadata", {}).get(META_CLASS_MAP_DIGEST, "")
        if pinned and pinned != self._digest:
            raise MetadataMismatchError(
                f"the classifier was exported with class map digest {pinned[:12]}..., the loaded class map has "
                f"{self._digest[:12]}...; edi_codes would be wrong. Use the class map of that release."
            )

    def predict(
        self, images: Sequence[ImageLike], batch_size: int | None = None
    ) -> list[list[PillPrediction]]:
        """Per input image, its pills (best detection first). Runners are activated if needed.

        ``batch_size=1`` gives the naive loop (one image, then one crop at a time).
        """
        self.activate()
        images = list(images)
        bs = batch_size or self.batch_size
        results: list[list[PillPrediction]] = []
        for start in range(0, len(images), bs):
            chunk = [load_image(item) for item in images[start : start + bs]]
            detections = detect_images(self.detector, chunk, self.cfg, bs)
            results.extend(self.classify_detections(chunk, detections, bs))
        return results

    def classify_detections(
        self,
        images: Sequence[Image.Image],
        detections: Sequence[np.ndarray],
        batch_size: int | None = None,
    ) -> list[list[PillPrediction]]:
        """Second stage alone: crop each detection (``[k, 6]`` rows) and classify the crops.

        All crops of all ``images`` are classified together in batches of ``batch_size``.
        """
        return self.classify_crops(self.prepare_crops(images, detections), batch_size)

    def prepare_crops(
        self,
        images: Sequence[Image.Image],
        detections: Sequence[np.ndarray],
        reuse: dict[tuple[int, tuple[int, int, int, int]], np.ndarray] | None = None,
    ) -> PreparedCrops:
        """CPU half of the second stage: the classifier batch of every detection's crop.

        No model runs here, so callers may do it on another thread while models compute.
        ``reuse`` maps ``(image index, crop_rect)`` to a crop already preprocessed and is
        filled in: a second engine's detections of the same images mostly cut the same
        whole-pixel rectangles, which need not be preprocessed twice.
        """
        pad = self.cfg.classification.preprocessing.crop_padding
        reuse = {} if reuse is None else reuse
        # A box clipped to nothing at the image border holds no pill to classify.
        kept = [d[(d[:, 2] > d[:, 0]) & (d[:, 3] > d[:, 1])] for d in detections]
        tensors = []
        for i, (img, det) in enumerate(zip(images, kept)):
            for row in det:
                key = (i, crop_rect(row[:4], img.size, pad))
                if key not in reuse:
                    reuse[key] = preprocess_one(load_image(img.crop(key[1])), self.spec)
                tensors.append(reuse[key])
        batch = (
            np.stack(tensors)
            if tensors
            else np.zeros((0, 3, self.spec.crop, self.spec.crop), np.float32)
        )
        return PreparedCrops(kept, batch)

    def classify_crops(
        self, prepared: PreparedCrops, batch_size: int | None = None
    ) -> list[list[PillPrediction]]:
        """Model half of the second stage: classify prepared crops, per image its pills."""
        bs = batch_size or self.batch_size
        scores: list[ClassScore] = []
        for start in range(0, len(prepared.tensors), bs):
            logits = self.classifier.infer(prepared.tensors[start : start + bs])
            scores.extend(scores_from_logits(logits, self.class_map))
        remaining = iter(scores)
        results: list[list[PillPrediction]] = []
        for det in prepared.detections:
            pills = []
            for row in det:
                s = next(remaining)
                box = (float(row[0]), float(row[1]), float(row[2]), float(row[3]))
                pills.append(
                    PillPrediction(
                        box, float(row[4]), s.class_index, s.edi_code, s.name, s.conf, s.top5
                    )
                )
            results.append(pills)
        return results

"""End-to-end parity: the whole pipeline (detect -> crop -> classify -> edi_code), Torch vs ONNX.

Each engine's raw detector head from the detection parity pass (same photos,
same letterboxed batch) goes through the one ``decode_and_nms`` with the
deployed NMS settings, then through the pipeline's own second stage
(``Pipeline.prepare_crops`` then ``Pipeline.classify_crops``, the two halves of
``classify_detections``) with that engine's classifier, so no detector runs twice
on a photo and no photo is letterboxed twice. The CPU half runs on the detection
pass's worker thread while the models compute; only the model half runs on the
caller's thread.

Pills are matched by box (IoU >= 0.5, one to one); a pill agrees when its match
exists and carries the same edi_code. A pill found by one engine only counts as a
disagreement, unless its detector confidence lies within the threshold band of
the NMS confidence cut (it crossed the threshold by a hair; counted apart as
borderline). A photo agrees when all of its pills agree.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pillsnap.equivalence.boxes import match_boxes
from pillsnap.equivalence.detection import THRESHOLD_BAND

if TYPE_CHECKING:
    from pillsnap.classmap import ClassMap
    from pillsnap.config import Config
    from pillsnap.engines.runners import Runner
    from pillsnap.pipeline import PillPrediction, PreparedCrops
    from pillsnap.preprocess import LetterboxInfo
    from pillsnap.sampling.sample import SampleItem

log = logging.getLogger(__name__)


@dataclass
class EndToEndParity:
    metrics: dict[str, float]
    disagreements: list[dict[str, Any]] = field(default_factory=list)

    def summary_line(self) -> str:
        m = self.metrics
        return (
            f"end-to-end parity on {int(m['photos'])} photos: edi_code agreement {m['pill_agreement']:.2%} of "
            f"{int(m['pills'])} pills, {m['photo_agreement']:.2%} of photos; {int(m['borderline_pills'])} borderline"
        )


def _as_array(pills: list[PillPrediction]) -> np.ndarray:
    return np.asarray([[*p.box, p.det_conf] for p in pills], np.float32).reshape(-1, 5)


def compare_photo(
    torch_pills: list[PillPrediction], onnx_pills: list[PillPrediction], conf_threshold: float
) -> dict[str, Any]:
    """Counts for one photo: agreeing, disagreeing and borderline pills, and the disagreements."""
    pairs = match_boxes(_as_array(torch_pills), _as_array(onnx_pills))
    agree = sum(torch_pills[i].edi_code == onnx_pills[j].edi_code for i, j, _ in pairs)
    differ = [
        {
            "torch": torch_pills[i].edi_code,
            "onnx": onnx_pills[j].edi_code,
            "box": list(torch_pills[i].box),
            "torch_conf": torch_pills[i].cls_conf,
            "onnx_conf": onnx_pills[j].cls_conf,
        }
        for i, j, _ in pairs
        if torch_pills[i].edi_code != onnx_pills[j].edi_code
    ]
    borderline = 0
    for side, pills, used in (
        ("torch", torch_pills, {p[0] for p in pairs}),
        ("onnx", onnx_pills, {p[1] for p in pairs}),
    ):
        for k, pill in enumerate(pills):
            if k in used:
                continue
            if pill.det_conf < conf_threshold + THRESHOLD_BAND:
                borderline += 1
            else:
                differ.append(
                    {
                        side: pill.edi_code,
                        "box": list(pill.box),
                        "only_in": side,
                        "det_conf": pill.det_conf,
                    }
                )
    return {"agree": agree, "differ": differ, "borderline": borderline}


class EndToEndAccumulator:
    """Fed batch by batch from the detection pass (``prepare``, ``classify`` per engine, ``record``)."""

    def __init__(
        self,
        cfg: Config,
        class_map: ClassMap,
        classifiers: dict[str, Runner],
        detectors: dict[str, Runner],
    ):
        from pillsnap.pipeline import Pipeline

        self.nms = cfg.postprocess.nms
        self.conf_threshold = cfg.postprocess.nms.conf_threshold
        self.pipelines = {
            engine: Pipeline(detectors[engine], runner, class_map, cfg, cfg.compare.batch_size)
            for engine, runner in classifiers.items()
        }
        self.counts = {"photos": 0, "photos_ok": 0, "agree": 0, "differ": 0, "borderline": 0}
        self.disagreements: list[dict[str, Any]] = []

    def prepare(
        self,
        items: list[SampleItem],
        images: list[np.ndarray],
        infos: list[LetterboxInfo],
        raw: dict[str, np.ndarray],
    ) -> tuple[list[SampleItem], dict[str, PreparedCrops]]:
        """CPU half, safe on a worker thread: each engine's NMS output and its crops."""
        from PIL import Image

        from pillsnap.postprocess import decode_and_nms

        pil_images = [Image.fromarray(img) for img in images]
        reuse: dict[tuple[int, tuple[int, int, int, int]], np.ndarray] = {}
        return items, {
            engine: pipe.prepare_crops(
                pil_images, decode_and_nms(raw[engine], infos, self.nms), reuse
            )
            for engine, pipe in self.pipelines.items()
        }

    def classify(
        self, prepared: tuple[list[SampleItem], dict[str, PreparedCrops]], engine: str
    ) -> list[list[PillPrediction]]:
        """Model half, one engine: its classifier on its own crops, per photo its pills."""
        return self.pipelines[engine].classify_crops(prepared[1][engine])

    def record(
        self,
        prepared: tuple[list[SampleItem], dict[str, PreparedCrops]],
        torch_pills: list[list[PillPrediction]],
        onnx_pills: list[list[PillPrediction]],
    ) -> None:
        """Compare the two engines' pills photo by photo."""
        for item, pt, po in zip(prepared[0], torch_pills, onnx_pills):
            res = compare_photo(pt, po, self.conf_threshold)
            c = self.counts
            c["agree"], c["borderline"], c["differ"] = (
                c["agree"] + res["agree"],
                c["borderline"] + res["borderline"],
                c["differ"] + len(res["differ"]),
            )
            c["photos"], c["photos_ok"] = c["photos"] + 1, c["photos_ok"] + (not res["differ"])
            if len(self.disagreements) < 50:
                self.disagreements += [{"path": str(item.path), **d} for d in res["differ"]]

    def result(self) -> EndToEndParity:
        c = self.counts
        pills = c["agree"] + c["differ"]
        metrics = {
            "photos": float(c["photos"]),
            "pills": float(pills),
            "agreeing_pills": float(c["agree"]),
            "disagreeing_pills": float(c["differ"]),
            "borderline_pills": float(c["borderline"]),
            "pill_agreement": c["agree"] / pills if pills else 1.0,
            "photo_agreement": c["photos_ok"] / c["photos"] if c["photos"] else float("nan"),
        }
        result = EndToEndParity(metrics, self.disagreements[:50])
        log.info(result.summary_line())
        return result

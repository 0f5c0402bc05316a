"""Detection parity: raw head, mAP against the labels, and box-by-box agreement.

Both engines see the same letterboxed batch; both raw outputs go through the one
``pillsnap.postprocess.decode_and_nms``. Three views:

* raw tensors before NMS: max / mean absolute difference (box channels in
  letterboxed pixels and score channels reported apart);
* mAP@0.5 and mAP@0.5:0.95 of each engine against the YOLO labels, with the
  standard evaluation thresholds (``postprocess.eval_*``), using Ultralytics'
  ``ap_per_class`` and its greedy matching, so the figure is Ultralytics' own;
* the deployed output (``postprocess.nms``): Torch and ONNX boxes matched per
  photo (Hungarian with scipy, else greedy by IoU); p95 of 1 - IoU of matched
  pairs, p95 of the score difference, unmatched boxes on each side. An
  unmatched box whose score lies within ``THRESHOLD_BAND`` of the confidence
  threshold is "borderline" (it crossed the threshold by a hair) and counted apart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from pillsnap.equivalence.batches import iter_batches, prefetch
from pillsnap.equivalence.boxes import MATCH_IOU, MapAccumulator, match_boxes
from pillsnap.equivalence.lanes import Lanes
from pillsnap.postprocess import decode_and_nms
from pillsnap.preprocess import letterbox, load_image
from pillsnap.sampling.detection import read_yolo_labels

if TYPE_CHECKING:
    from pillsnap.config import Config
    from pillsnap.engines.runners import Runner
    from pillsnap.sampling.sample import SampleItem, SkippedFile

log = logging.getLogger(__name__)
THRESHOLD_BAND = 0.02
EXAMPLE_PHOTOS = 4
PROBE_SAMPLES = 2


@dataclass
class DetectionParity:
    metrics: dict[str, float]
    iou_diffs: np.ndarray
    """1 - IoU of every matched Torch/ONNX box pair of the deployed output (for plots)."""
    score_diffs: np.ndarray
    examples: list[dict[str, Any]]
    """A few photos: path, Torch boxes, ONNX boxes (deployed output, original pixels)."""
    thresholds: dict[str, dict[str, float]]
    probe_inputs: np.ndarray
    notes: list[str] = field(default_factory=list)

    def summary_line(self) -> str:
        m = self.metrics
        return (
            f"detection parity on {int(m['photos'])} photos: mAP50 torch {m['map50_torch']:.4f} onnx {m['map50_onnx']:.4f} "
            f"(delta {m['delta_map50']:+.4f}); mAP50-95 delta {m['delta_map50_95']:+.4f}; matched boxes "
            f"{int(m['matched_pairs'])}, 1-IoU p95 {m['iou_diff_p95']:.2e}, score diff p95 {m['score_diff_p95']:.2e}, "
            f"unmatched torch/onnx {int(m['unmatched_torch'])}/{int(m['unmatched_onnx'])}; raw max |d| {m['raw_max_abs_diff']:.2e}"
        )


@dataclass
class _Photo:
    rgb: np.ndarray
    tensor: np.ndarray
    info: Any
    gt_cls: np.ndarray
    gt_boxes: np.ndarray


def load_photo(item: SampleItem, imgsz: int) -> _Photo:
    """Letterboxed tensor + letterbox info + labels in original pixels."""
    rgb = np.asarray(load_image(item.path))
    tensor, info = letterbox(rgb, imgsz)
    labels = read_yolo_labels(item.path)
    h, w = rgb.shape[:2]
    cx, cy, bw, bh = labels[:, 1] * w, labels[:, 2] * h, labels[:, 3] * w, labels[:, 4] * h
    boxes = (
        np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
        if len(labels)
        else np.zeros((0, 4))
    )
    return _Photo(rgb, tensor, info, labels[:, 0].astype(np.float32), boxes.astype(np.float32))


class _DetectionStats:
    """Everything measured from the raw outputs; fed batch by batch from one worker thread."""

    def __init__(self, cfg: Config):
        self.pp = cfg.postprocess
        self.maps = {"torch": MapAccumulator(), "onnx": MapAccumulator()}
        self.raw_max = {"all": 0.0, "box": 0.0, "score": 0.0}
        self.raw_sum, self.raw_count = 0.0, 0
        self.iou_diffs: list[float] = []
        self.score_diffs: list[float] = []
        self.examples: list[dict[str, Any]] = []
        self.counts = {
            "matched_pairs": 0,
            "unmatched_torch": 0,
            "unmatched_onnx": 0,
            "unmatched_borderline": 0,
            "class_disagreements": 0,
            "boxes_torch": 0,
            "boxes_onnx": 0,
            "gt_boxes": 0,
            "photos": 0,
            "recalled_torch": 0,
            "recalled_onnx": 0,
        }
        self.top_score = {"torch": 0.0, "onnx": 0.0}
        """Sum over photos of each engine's highest class score (collapsed INT8 scores show here)."""

    def add(
        self, items: list[SampleItem], photos: list[_Photo], raw_t: np.ndarray, raw_o: np.ndarray
    ) -> None:
        pp, nms = self.pp, self.pp.nms
        infos = [p.info for p in photos]
        d = np.abs(raw_t.astype(np.float64) - raw_o)
        for key, part in (("all", d), ("box", d[:, :4]), ("score", d[:, 4:])):
            self.raw_max[key] = max(self.raw_max[key], float(part.max()))
        self.raw_sum, self.raw_count = self.raw_sum + float(d.sum()), self.raw_count + d.size
        evals = {
            name: decode_and_nms(
                raw,
                infos,
                nms,
                conf=pp.eval_conf_threshold,
                iou=pp.eval_iou_threshold,
                max_det=pp.eval_max_detections,
            )
            for name, raw in (("torch", raw_t), ("onnx", raw_o))
        }
        deployed_t, deployed_o = (
            decode_and_nms(raw_t, infos, nms),
            decode_and_nms(raw_o, infos, nms),
        )
        for name, raw in (("torch", raw_t), ("onnx", raw_o)):
            self.top_score[name] += (
                float(raw[:, 4:].max(axis=(1, 2)).sum()) if raw.shape[1] > 4 else 0.0
            )
        for i, photo in enumerate(photos):
            for name, acc in self.maps.items():
                acc.add(evals[name][i], photo.gt_cls, photo.gt_boxes)
            for name, dets in (("torch", deployed_t[i]), ("onnx", deployed_o[i])):
                self.counts[f"recalled_{name}"] += _recalled(photo, dets)
            _box_parity(
                deployed_t[i],
                deployed_o[i],
                nms.conf_threshold,
                self.counts,
                self.iou_diffs,
                self.score_diffs,
            )
            self.counts["gt_boxes"] += len(photo.gt_boxes)
            if len(self.examples) < EXAMPLE_PHOTOS:
                self.examples.append(
                    {
                        "path": str(items[i].path),
                        "torch": deployed_t[i].tolist(),
                        "onnx": deployed_o[i].tolist(),
                        "labels": photo.gt_boxes.tolist(),
                    }
                )
        self.counts["photos"] += len(photos)

    def result(self, probe: list[np.ndarray]) -> DetectionParity:
        pp, nms, counts = self.pp, self.pp.nms, self.counts
        (m50_t, m_t), (m50_o, m_o) = self.maps["torch"].compute(), self.maps["onnx"].compute()
        ious, scores = (
            np.asarray(self.iou_diffs, np.float64),
            np.asarray(self.score_diffs, np.float64),
        )
        metrics = {
            **{k: float(v) for k, v in counts.items()},
            "map50_torch": m50_t,
            "map50_onnx": m50_o,
            "map50_95_torch": m_t,
            "map50_95_onnx": m_o,
            "delta_map50": m50_o - m50_t,
            "delta_map50_95": m_o - m_t,
            "iou_diff_p95": float(np.quantile(ious, 0.95)) if len(ious) else 0.0,
            "iou_diff_max": float(ious.max()) if len(ious) else 0.0,
            "score_diff_p95": float(np.quantile(scores, 0.95)) if len(scores) else 0.0,
            "unmatched_rate": (counts["unmatched_torch"] + counts["unmatched_onnx"])
            / max(counts["boxes_torch"] + counts["boxes_onnx"], 1),
            "raw_max_abs_diff": self.raw_max["all"],
            "raw_box_max_abs_diff": self.raw_max["box"],
            "raw_score_max_abs_diff": self.raw_max["score"],
            "raw_mean_abs_diff": self.raw_sum / max(self.raw_count, 1),
            **self._recall_and_scores(),
        }
        thresholds = {
            "map_eval": {
                "conf": pp.eval_conf_threshold,
                "iou": pp.eval_iou_threshold,
                "max_det": pp.eval_max_detections,
            },
            "deployed": {
                "conf": nms.conf_threshold,
                "iou": nms.iou_threshold,
                "max_det": nms.max_detections,
            },
            "box_match_iou": {"iou": MATCH_IOU},
            "threshold_band": {"score": THRESHOLD_BAND},
        }
        return DetectionParity(metrics, ious, scores, self.examples, thresholds, np.stack(probe))

    def _recall_and_scores(self) -> dict[str, float]:
        """Recall against the labels at the deployed cut; how the top scores compare (INT8 gate)."""
        c, gt, photos = self.counts, max(self.counts["gt_boxes"], 1), max(self.counts["photos"], 1)
        top_t, top_o = self.top_score["torch"] / photos, self.top_score["onnx"] / photos
        ratio = top_o / top_t if top_t > 0 else float("nan")
        return {
            "recall_torch": c["recalled_torch"] / gt,
            "recall_onnx": c["recalled_onnx"] / gt,
            "recall_drop": (c["recalled_torch"] - c["recalled_onnx"]) / gt,
            "top_score_torch": top_t,
            "top_score_onnx": top_o,
            "top_score_log2_ratio": float(np.log2(ratio)) if ratio > 0 else float("nan"),
        }


def _recalled(photo: _Photo, dets: np.ndarray) -> int:
    """Labelled pills found by the deployed detections (one to one, IoU >= 0.5, same class)."""
    if not len(photo.gt_boxes) or not len(dets):
        return 0
    pairs = match_boxes(photo.gt_boxes, dets[:, :4])
    return sum(int(photo.gt_cls[i]) == int(dets[j, 5]) for i, j, _ in pairs)


class BatchConsumer(Protocol):
    """Something else measured on the detection pass's batches (the end-to-end check).

    ``prepare`` does the CPU work and runs on the post-processing thread;
    ``classify`` runs one engine's models (Torch on the caller's thread, ONNX Runtime
    on its lane) two batches later, so the preparation has long finished;
    ``record`` compares the two engines' results.
    """

    def prepare(
        self,
        items: list[SampleItem],
        images: list[np.ndarray],
        infos: list[Any],
        raw: dict[str, np.ndarray],
    ) -> Any: ...

    def classify(self, prepared: Any, engine: str) -> Any: ...

    def record(self, prepared: Any, torch_out: Any, onnx_out: Any) -> None: ...


def compare_detection(
    items: list[SampleItem],
    cfg: Config,
    torch_runner: Runner,
    onnx_runner: Runner,
    *,
    skipped: list[SkippedFile],
    progress: bool = True,
    consumer: BatchConsumer | None = None,
    lanes: Lanes | None = None,
) -> DetectionParity:
    """Run both engines on ``items`` and measure parity (see the module doc).

    Photos are decoded on one low-priority thread and the raw outputs post-processed
    (NMS, mAP matching, box parity) on another, so both overlap the model compute.
    ``consumer`` sees every batch (items, RGB photos, letterbox infos,
    ``{"torch": raw, "onnx": raw}``), so the end-to-end check reuses the detector
    outputs instead of running both detectors a second time on the same photos.

    Per batch, with engines side by side (``lanes``): Torch classifies the crops of
    an earlier batch on its share of the cores while ONNX Runtime runs this batch's
    detector and the same crops on its lane; then the Torch detector runs alone
    with every core, where it uses them best (large convolutions).
    """
    from collections import deque
    from concurrent.futures import Future, ThreadPoolExecutor

    from tqdm.auto import tqdm

    from pillsnap.equivalence.batches import lower_priority

    lanes = lanes or Lanes.in_turn()
    stats = _DetectionStats(cfg)
    probe: list[np.ndarray] = []
    pending: list[Future[None]] = []
    prepared: deque[Future[Any]] = deque()
    batches = prefetch(
        iter_batches(
            items, cfg.compare.batch_size, lambda it: load_photo(it, cfg.detection.imgsz), skipped
        )
    )

    def classify_due(due: Any, then: Callable[[], np.ndarray] | None = None) -> tuple[Any, Any]:
        """Both engines' end-to-end classification of ``due``; ONNX Runtime also runs ``then``."""

        def onnx_side() -> tuple[Any, Any]:
            out = then() if then is not None else None
            return out, (consumer.classify(due, "onnx") if due is not None else None)

        torch_pills, (onnx_out, onnx_pills) = lanes.both(
            lambda: consumer.classify(due, "torch") if due is not None else None, onnx_side
        )
        if due is not None:
            consumer.record(due, torch_pills, onnx_pills)
        return onnx_out

    with (
        ThreadPoolExecutor(1, "pillsnap-postprocess", initializer=lower_priority) as post,
        tqdm(total=len(items), desc="detection parity", unit="photo", disable=not progress) as bar,
    ):
        for batch in batches:
            x = np.stack([p.tensor for p in batch.data])
            # Prepared two batches ago: done by now, so the models never wait for the CPU work.
            due = prepared.popleft().result() if len(prepared) >= 2 else None
            raw_o = classify_due(due, partial(onnx_runner.infer, x))
            with lanes.torch_alone():
                raw_t = torch_runner.infer(x)
            if raw_t.shape != raw_o.shape:
                raise ValueError(
                    f"Torch raw head {raw_t.shape} and ONNX raw head {raw_o.shape} differ in shape"
                )
            if consumer is not None:
                prepared.append(
                    post.submit(
                        consumer.prepare,
                        batch.items,
                        [p.rgb for p in batch.data],
                        [p.info for p in batch.data],
                        {"torch": raw_t, "onnx": raw_o},
                    )
                )
            pending.append(post.submit(stats.add, batch.items, batch.data, raw_t, raw_o))
            if len(probe) < PROBE_SAMPLES:
                probe.extend(x[: PROBE_SAMPLES - len(probe)])
            while (
                len(pending) > 2
            ):  # bounded memory: at most a few batches of raw outputs in flight
                pending.pop(0).result()
            bar.update(len(batch.items))
        while prepared:
            classify_due(prepared.popleft().result())
        for future in pending:
            future.result()
    if stats.counts["photos"] == 0:
        from pillsnap.exceptions import DataError

        raise DataError(
            f"no readable detection photo among the {len(items)} sampled "
            f"(first problems: {'; '.join(f'{s.path}: {s.reason}' for s in skipped[:3])})"
        )
    result = stats.result(probe)
    log.info(result.summary_line())
    return result


def _box_parity(
    det_t: np.ndarray,
    det_o: np.ndarray,
    conf_threshold: float,
    counts: dict[str, int],
    iou_diffs: list[float],
    score_diffs: list[float],
) -> None:
    pairs = match_boxes(det_t, det_o)
    counts["boxes_torch"] += len(det_t)
    counts["boxes_onnx"] += len(det_o)
    counts["matched_pairs"] += len(pairs)
    for i, j, iou in pairs:
        iou_diffs.append(1.0 - iou)
        score_diffs.append(abs(float(det_t[i, 4]) - float(det_o[j, 4])))
        counts["class_disagreements"] += int(det_t[i, 5] != det_o[j, 5])
    for side, det, used in (
        ("torch", det_t, {p[0] for p in pairs}),
        ("onnx", det_o, {p[1] for p in pairs}),
    ):
        for k in range(len(det)):
            if k in used:
                continue
            if det[k, 4] < conf_threshold + THRESHOLD_BAND:
                counts["unmatched_borderline"] += 1
            else:
                counts[f"unmatched_{side}"] += 1

"""Boxes: IoU, Torch <-> other-engine box matching, and mAP against the labels.

``MapAccumulator`` uses Ultralytics' ``ap_per_class`` and its greedy matching, so
the mAP figures are Ultralytics' own; ``match_boxes`` pairs two engines' deployed
boxes (Hungarian with scipy, else greedy by IoU).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
MATCH_IOU = 0.5


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix ``[len(a), len(b)]`` of ``xyxy`` boxes."""
    a, b = np.asarray(a, np.float64)[:, :4], np.asarray(b, np.float64)[:, :4]
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def match_boxes(
    a: np.ndarray, b: np.ndarray, min_iou: float = MATCH_IOU
) -> list[tuple[int, int, float]]:
    """One-to-one pairs ``(i, j, iou)`` of two engines' detections with IoU >= ``min_iou``.

    Rows are ``x1, y1, x2, y2[, score[, class]]``. The cost of a pair is
    ``(1 - IoU) + |score difference| + class difference``, so near-identical boxes
    (IoU ties) pair with their own counterpart, not a neighbour with another score.
    Hungarian assignment when scipy is installed, else greedy by cost.
    """
    if len(a) == 0 or len(b) == 0:
        return []
    iou = box_iou(a, b)
    cost = 1.0 - iou
    if a.shape[1] > 4 and b.shape[1] > 4:
        cost = cost + np.abs(a[:, None, 4].astype(np.float64) - b[None, :, 4])
    if a.shape[1] > 5 and b.shape[1] > 5:
        cost = cost + (a[:, None, 5] != b[None, :, 5])
    cost = np.where(iou >= min_iou, cost, np.inf)
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError:
        pairs = []
        used_a, used_b = set(), set()
        for flat in np.argsort(cost, axis=None, kind="stable"):
            i, j = divmod(int(flat), cost.shape[1])
            if not np.isfinite(cost[i, j]):
                break
            if i not in used_a and j not in used_b:
                used_a.add(i)
                used_b.add(j)
                pairs.append((i, j, float(iou[i, j])))
        return sorted(pairs)
    rows, cols = linear_sum_assignment(np.where(np.isfinite(cost), cost, 1e6))
    return [
        (int(i), int(j), float(iou[i, j])) for i, j in zip(rows, cols) if np.isfinite(cost[i, j])
    ]


def match_predictions(pred_cls: np.ndarray, true_cls: np.ndarray, iou: np.ndarray) -> np.ndarray:
    """Ultralytics' greedy matching (``BaseValidator.match_predictions``): ``[N_pred, 10]`` correct flags.

    ``iou`` is ``[N_true, N_pred]`` with predictions sorted by descending confidence.
    """
    correct = np.zeros((len(pred_cls), len(IOU_THRESHOLDS)), bool)
    if len(pred_cls) == 0 or len(true_cls) == 0:
        return correct
    iou = iou * (true_cls[:, None] == pred_cls[None, :])
    matched = np.zeros((iou.shape[0], len(IOU_THRESHOLDS)), bool)
    cols = range(len(IOU_THRESHOLDS))
    for j in np.flatnonzero((iou >= IOU_THRESHOLDS.min()).any(0)):
        available = np.where(matched, 0, iou[:, j, None])
        k = available.argmax(0)
        correct[j] = available[k, cols] >= IOU_THRESHOLDS
        matched[k, cols] |= correct[j]
    return correct


@dataclass
class MapAccumulator:
    """Streams per-photo statistics; ``compute`` gives mAP@0.5 and mAP@0.5:0.95."""

    tp: list[np.ndarray] = field(default_factory=list)
    conf: list[np.ndarray] = field(default_factory=list)
    pred_cls: list[np.ndarray] = field(default_factory=list)
    target_cls: list[np.ndarray] = field(default_factory=list)

    def add(self, pred: np.ndarray, gt_cls: np.ndarray, gt_boxes: np.ndarray) -> None:
        pred = pred[np.argsort(-pred[:, 4], kind="stable")]
        iou = (
            box_iou(gt_boxes, pred)
            if len(gt_boxes) and len(pred)
            else np.zeros((len(gt_boxes), len(pred)))
        )
        self.tp.append(match_predictions(pred[:, 5], gt_cls, iou))
        self.conf.append(pred[:, 4])
        self.pred_cls.append(pred[:, 5])
        self.target_cls.append(gt_cls)

    def compute(self) -> tuple[float, float]:
        from ultralytics.utils.metrics import ap_per_class

        target = np.concatenate(self.target_cls) if self.target_cls else np.zeros(0)
        if not len(target):
            return float("nan"), float("nan")
        ap = ap_per_class(
            np.concatenate(self.tp),
            np.concatenate(self.conf),
            np.concatenate(self.pred_cls),
            target,
        )[5]
        return float(ap[:, 0].mean()), float(ap.mean())

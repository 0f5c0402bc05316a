"""The one detector post-processing shared by every engine: decode, NMS, map back.

Input is the raw pre-NMS head ``[N, 4+nc, anchors]`` (xywh in letterboxed pixels,
sigmoided class scores) that both the Torch ``DetectionModel`` and the exported ONNX
produce. Output per image: ``[k, 6]`` float32 rows ``x1, y1, x2, y2, conf, class_id``
in ORIGINAL image pixels, best first. The steps follow Ultralytics'
``non_max_suppression`` + ``scale_boxes`` (best class per anchor, at most 30000
candidates, class-aware NMS unless ``class_agnostic``) so results match its predictor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from pillsnap.exceptions import UserInputError

if TYPE_CHECKING:
    import torch

    from pillsnap.config import NmsConfig
    from pillsnap.preprocess import LetterboxInfo

MAX_NMS_CANDIDATES = 30000  # Ultralytics' max_nms: more boxes than this are cut by confidence first
PAD_CLASS_ID = -1.0  # class_id of padding rows in pad_detections


def decode_and_nms(
    raw: np.ndarray | torch.Tensor,
    infos: list[LetterboxInfo],
    nms: NmsConfig,
    *,
    conf: float | None = None,
    iou: float | None = None,
    max_det: int | None = None,
) -> list[np.ndarray]:
    """Raw head -> per-image detections ``[k, 6]`` in original image coordinates.

    ``conf`` / ``iou`` / ``max_det`` override ``nms`` (the mAP evaluation uses a low
    confidence cut and more detections than serving does).
    """
    import torch
    from torchvision.ops import batched_nms
    from torchvision.ops import nms as plain_nms

    pred = torch.as_tensor(raw).float()
    if pred.ndim != 3 or pred.shape[1] < 5:
        raise UserInputError(
            f"expected the raw detector head [N, 4+num_classes, anchors], got shape {tuple(pred.shape)}"
        )
    if pred.shape[0] != len(infos):
        raise UserInputError(
            f"{pred.shape[0]} image(s) in the detector output but {len(infos)} letterbox info(s)"
        )
    conf_t = nms.conf_threshold if conf is None else conf
    iou_t = nms.iou_threshold if iou is None else iou
    limit = nms.max_detections if max_det is None else max_det
    out = []
    for image_pred, info in zip(pred.transpose(1, 2), infos):  # [anchors, 4+nc]
        scores, classes = image_pred[:, 4:].max(dim=1)
        keep = scores > conf_t
        boxes, scores, classes = _xywh2xyxy(image_pred[keep, :4]), scores[keep], classes[keep]
        if scores.numel() > MAX_NMS_CANDIDATES:
            top = scores.argsort(descending=True)[:MAX_NMS_CANDIDATES]
            boxes, scores, classes = boxes[top], scores[top], classes[top]
        if nms.class_agnostic:
            kept = plain_nms(boxes, scores, iou_t)
        else:
            kept = batched_nms(boxes, scores, classes, iou_t)
        kept = kept[:limit]
        boxes = scale_to_original(boxes[kept].numpy(), info)
        rows = np.concatenate(
            [boxes, scores[kept].numpy()[:, None], classes[kept].numpy()[:, None]], axis=1
        )
        out.append(rows.astype(np.float32, copy=False))
    return out


def _xywh2xyxy(xywh: torch.Tensor) -> torch.Tensor:
    import torch

    xy, wh = xywh[:, :2], xywh[:, 2:4] / 2
    return torch.cat([xy - wh, xy + wh], dim=1)


def scale_to_original(boxes: np.ndarray, info: LetterboxInfo) -> np.ndarray:
    """Letterboxed ``xyxy`` -> original-image ``xyxy``, clipped to the image.

    ``LetterBox`` resizes each side to ``round(side * gain)`` and places the image
    at ``round(pad - 0.1)`` pixels, so the exact per-axis gain and integer offset
    are recovered from ``info`` (as Ultralytics' ``scale_boxes`` does).
    """
    h, w = info.orig_shape
    new_w, new_h = max(round(w * info.gain), 1), max(round(h * info.gain), 1)
    pad_x, pad_y = round(info.pad[0] - 0.1), round(info.pad[1] - 0.1)
    out = boxes.astype(np.float32, copy=True)
    out[:, [0, 2]] = (out[:, [0, 2]] - pad_x) / (new_w / w)
    out[:, [1, 3]] = (out[:, [1, 3]] - pad_y) / (new_h / h)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, w)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, h)
    return out


def pad_detections(detections: list[np.ndarray], max_boxes: int | None = None) -> np.ndarray:
    """Ragged per-image detections -> the spec's ``[N, max_boxes, 6]`` array.

    Padding rows are zeros with ``class_id = -1`` so they can never be mistaken for
    a detection; rows beyond ``max_boxes`` (default: the longest list) are dropped.
    """
    width = max_boxes if max_boxes is not None else max((len(d) for d in detections), default=0)
    out = np.zeros((len(detections), width, 6), np.float32)
    out[:, :, 5] = PAD_CLASS_ID
    for i, det in enumerate(detections):
        k = min(len(det), width)
        out[i, :k] = det[:k]
    return out


def detections_to_dicts(rows: np.ndarray) -> list[dict[str, Any]]:
    """``[k, 6]`` rows -> JSON-ready dicts (``box`` as ``[x1, y1, x2, y2]``)."""
    return [
        {
            "box": [round(float(v), 2) for v in r[:4]],
            "conf": round(float(r[4]), 5),
            "class_id": int(r[5]),
        }
        for r in rows
    ]

"""The shared NMS: parity with Ultralytics' own NMS + scale_boxes, mapping back, padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import pillsnap  # noqa: F401 - offline Ultralytics before it is imported
from pillsnap.config import NmsConfig
from pillsnap.exceptions import UserInputError
from pillsnap.postprocess import PAD_CLASS_ID, decode_and_nms, pad_detections, scale_to_original
from pillsnap.preprocess import letterbox

try:  # the NMS moved from ultralytics.utils.ops to ultralytics.utils.nms in 8.3.x
    from ultralytics.utils.nms import non_max_suppression
except ImportError:  # pragma: no cover - older Ultralytics
    from ultralytics.utils.ops import non_max_suppression
from ultralytics.utils.ops import scale_boxes

IMGSZ = 160


def _raw_head(batch: int, nc: int, anchors: int = 700, seed: int = 0) -> torch.Tensor:
    """Clustered boxes (so NMS has overlaps to remove) with sigmoid-like scores."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(batch, 2, 12, generator=g) * IMGSZ
    pick = torch.randint(0, 12, (batch, anchors), generator=g)
    xy = (
        torch.gather(centres, 2, pick[:, None, :].expand(-1, 2, -1))
        + torch.randn(batch, 2, anchors, generator=g) * 3
    )
    wh = 12 + torch.rand(batch, 2, anchors, generator=g) * 30
    scores = torch.rand(batch, nc, anchors, generator=g) ** 3
    return torch.cat([xy, wh, scores], dim=1)


def _infos(shapes):
    return [letterbox(np.zeros((h, w, 3), np.uint8), IMGSZ)[1] for h, w in shapes]


@pytest.mark.parametrize("nc,agnostic", [(1, False), (3, False), (3, True)])
def test_matches_ultralytics_nms_and_scale_boxes(nc, agnostic):
    shapes = [(240, 320), (333, 197), (160, 160)]  # odd sizes exercise LetterBox's rounding
    raw = _raw_head(len(shapes), nc)
    nms = NmsConfig(
        conf_threshold=0.25, iou_threshold=0.5, max_detections=50, class_agnostic=agnostic
    )
    ours = decode_and_nms(raw.numpy(), _infos(shapes), nms)
    theirs = non_max_suppression(
        raw.clone(), conf_thres=0.25, iou_thres=0.5, agnostic=agnostic, max_det=50
    )
    for mine, ref, shape in zip(ours, theirs, shapes):
        ref = ref.clone()
        ref[:, :4] = scale_boxes((IMGSZ, IMGSZ), ref[:, :4], shape)
        assert mine.dtype == np.float32 and mine.shape[1] == 6
        assert len(mine) == len(ref) > 3
        np.testing.assert_allclose(mine, ref.numpy(), atol=1e-3)


def test_overrides_and_torch_input():
    raw = _raw_head(1, 2, anchors=150)
    infos = _infos([(240, 320)])
    nms = NmsConfig(conf_threshold=0.25, iou_threshold=0.5, max_detections=300)
    default = decode_and_nms(raw, infos, nms)[0]
    assert len(decode_and_nms(raw, infos, nms, max_det=2)[0]) == 2
    low = decode_and_nms(raw, infos, nms, conf=0.01)[0]
    assert len(low) > len(default) and low[:, 4].min() > 0.01
    strict = decode_and_nms(raw, infos, nms, iou=0.05)[0]
    assert len(strict) < len(default)
    assert np.all(np.diff(default[:, 4]) <= 0), "best detection first"


def test_boxes_map_back_to_original_pixels():
    h, w = 237, 411
    _, info = letterbox(np.zeros((h, w, 3), np.uint8), IMGSZ)
    original = np.array([[10.0, 20.0, 200.0, 230.0], [0.0, 0.0, float(w), float(h)]], np.float32)
    gain_x, gain_y = round(w * info.gain) / w, round(h * info.gain) / h
    pad_x, pad_y = round(info.pad[0] - 0.1), round(info.pad[1] - 0.1)
    boxed = original * [gain_x, gain_y, gain_x, gain_y] + [pad_x, pad_y, pad_x, pad_y]
    np.testing.assert_allclose(scale_to_original(boxed, info), original, atol=1e-3)
    outside = scale_to_original(np.array([[-50, -50, 500, 500]], np.float32), info)
    assert outside.tolist() == [[0, 0, w, h]], "boxes are clipped to the image"


def test_pad_detections_to_fixed_array():
    dets = [
        np.ones((2, 6), np.float32),
        np.zeros((0, 6), np.float32),
        np.full((4, 6), 2, np.float32),
    ]
    padded = pad_detections(dets)
    assert padded.shape == (3, 4, 6)
    assert np.all(padded[1, :, 5] == PAD_CLASS_ID) and np.all(padded[1, :, 4] == 0)
    np.testing.assert_array_equal(padded[2], dets[2])
    assert pad_detections(dets, max_boxes=3).shape == (3, 3, 6)
    assert pad_detections([]).shape == (0, 0, 6)


def test_input_errors_are_explained():
    nms = NmsConfig()
    with pytest.raises(UserInputError, match=r"\[N, 4\+num_classes, anchors\]"):
        decode_and_nms(np.zeros((1, 3, 700), np.float32), _infos([(10, 10)]), nms)
    with pytest.raises(UserInputError, match="got shape"):
        decode_and_nms(np.zeros((5, 700), np.float32), _infos([(10, 10)]), nms)
    with pytest.raises(UserInputError, match="2 image"):
        decode_and_nms(np.zeros((2, 5, 10), np.float32), _infos([(10, 10)]), nms)

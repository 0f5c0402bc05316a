"""Composing a phone-like photo: background, pills with shadows, light, camera effects.

``compose_photo`` returns the finished RGB array and exact boxes; JPEG encoding is
left to the writer so that crops are cut from the very bytes saved on disk.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pillsnap.synth.classes import PillSpec
from pillsnap.synth.render import render_pill, rotate_sprite

PHOTO_SIZES = ((640, 480), (480, 640), (512, 512))  # (w, h)
MAX_OCCLUSION = 0.2
"""At most this share of a pill may be hidden by pills placed on top of it."""
_TABLES = (
    (196, 160, 118),
    (150, 104, 66),
    (92, 64, 44),
    (200, 200, 196),
    (120, 124, 130),
    (60, 64, 70),
    (70, 96, 130),
    (68, 104, 76),
    (232, 230, 224),
    (214, 200, 176),
)
_TRAYS = ((236, 236, 232), (222, 228, 236), (214, 232, 216), (240, 232, 214), (196, 206, 222))


@dataclass(frozen=True)
class PlacedPill:
    class_id: int
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1] (a few random values upsampled bicubically)."""
    small = rng.uniform(-1, 1, size=(cells, cells)).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def make_background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Plain, textured (wood, fabric) or tray background, float32 ``[h, w, 3]``."""
    kind = rng.choice(["plain", "wood", "fabric", "tray"], p=[0.25, 0.2, 0.25, 0.3])
    base = np.asarray(_TABLES[int(rng.integers(len(_TABLES)))], np.float32) + rng.normal(0, 6, 3)
    bg = np.empty((h, w, 3), np.float32)
    bg[:] = base
    bg += (_smooth_noise(rng, h, w, 5) * rng.uniform(3, 10))[..., None]
    if kind == "wood":
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        theta = rng.uniform(0, np.pi)
        u = xx * np.cos(theta) + yy * np.sin(theta)
        warp = _smooth_noise(rng, h, w, 4) * rng.uniform(10, 30)
        grain = np.sin((u + warp) * rng.uniform(0.08, 0.2)) * 0.5 + 0.5
        bg *= (0.82 + 0.18 * grain)[..., None]
    elif kind == "fabric":
        fine = rng.standard_normal((h, w), dtype=np.float32)
        fine = cv2.GaussianBlur(fine, (0, 0), rng.uniform(0.6, 1.5))
        bg += (fine * rng.uniform(6, 14))[..., None]
    elif kind == "tray":
        bg = _add_tray(rng, bg)
    return bg


def _add_tray(rng: np.random.Generator, bg: np.ndarray) -> np.ndarray:
    h, w = bg.shape[:2]
    mx, my = int(w * rng.uniform(0.0, 0.12)), int(h * rng.uniform(0.0, 0.12))
    inside = np.zeros((h, w), np.uint8)
    cv2.rectangle(inside, (mx, my), (w - 1 - mx, h - 1 - my), 1, thickness=-1)
    dist = cv2.distanceTransform(inside, cv2.DIST_L2, 3)
    tray = np.asarray(_TRAYS[int(rng.integers(len(_TRAYS)))], np.float32) + rng.normal(0, 4, 3)
    rim = float(rng.uniform(8, 20))
    # the tray floor darkens towards the rim (shadow of the raised edge), a bright lip on top
    floor = 0.8 + 0.2 * np.clip(dist / rim, 0, 1)
    lip = ((dist > 0) & (dist < 3)).astype(np.float32) * 0.15
    tray_img = tray * (floor + lip)[..., None]
    m = (inside > 0)[..., None]
    return np.where(m, tray_img, bg).astype(np.float32)


def _try_place(
    rng: np.random.Generator,
    sprite: np.ndarray,
    owner: np.ndarray,
    areas: list[int],
    placed_boxes: list[tuple[float, float, float, float]],
) -> tuple[int, int] | None:
    """Top-left corner for ``sprite`` that keeps it inside and others mostly visible."""
    h, w = owner.shape
    sh, sw = sprite.shape[:2]
    if sh >= h - 4 or sw >= w - 4:
        return None
    solid = sprite[..., 3] > 0.5
    for _ in range(40):
        if placed_boxes and rng.random() < 0.4:  # touch or lean on a neighbour
            x1, y1, x2, y2 = placed_boxes[int(rng.integers(len(placed_boxes)))]
            r = 0.25 * ((x2 - x1) + (y2 - y1)) + 0.25 * (sw + sh)
            ang = rng.uniform(0, 2 * np.pi)
            cx = (x1 + x2) / 2 + np.cos(ang) * r * rng.uniform(0.7, 1.0)
            cy = (y1 + y2) / 2 + np.sin(ang) * r * rng.uniform(0.7, 1.0)
            x0, y0 = int(cx - sw / 2), int(cy - sh / 2)
        else:
            x0, y0 = int(rng.integers(2, w - sw - 1)), int(rng.integers(2, h - sh - 1))
        if x0 < 2 or y0 < 2 or x0 + sw > w - 2 or y0 + sh > h - 2:
            continue
        under = owner[y0 : y0 + sh, x0 : x0 + sw][solid]
        under = under[under >= 0]
        if under.size:
            hidden = np.bincount(under, minlength=len(areas))
            visible = np.bincount(owner[owner >= 0], minlength=len(areas))
            if np.any((visible - hidden) < (1 - MAX_OCCLUSION) * np.asarray(areas)):
                continue
        return x0, y0
    return None


def compose_photo(
    rng: np.random.Generator,
    specs: list[PillSpec],
    class_ids: list[int],
    size: tuple[int, int],
    px_per_mm: float,
) -> tuple[np.ndarray, list[PlacedPill]]:
    """A finished photo (uint8 ``[h, w, 3]``) and the pills that fit on it, in drawing order."""
    w, h = size
    canvas = make_background(rng, w, h)
    owner = np.full((h, w), -1, np.int32)
    areas: list[int] = []
    placed: list[PlacedPill] = []
    light = rng.uniform(0, 2 * np.pi)
    shadow_dx, shadow_dy = np.cos(light), np.sin(light)
    shadow_len, shadow_soft = rng.uniform(2, 9), rng.uniform(2, 6)
    shadow_strength = rng.uniform(0.25, 0.55)
    for cid in class_ids:
        sprite = rotate_sprite(render_pill(specs[cid], px_per_mm, rng), rng.uniform(0, 360))
        pos = _try_place(rng, sprite, owner, areas, [p.box for p in placed])
        if pos is None:
            continue
        x0, y0 = pos
        sh, sw = sprite.shape[:2]
        _cast_shadow(
            canvas,
            sprite[..., 3],
            x0 + shadow_dx * shadow_len,
            y0 + shadow_dy * shadow_len,
            shadow_soft,
            shadow_strength,
        )
        a = sprite[..., 3:4]
        region = canvas[y0 : y0 + sh, x0 : x0 + sw]
        region[:] = region * (1 - a) + sprite[..., :3] * a
        solid = sprite[..., 3] > 0.5
        owner[y0 : y0 + sh, x0 : x0 + sw][solid] = len(areas)
        areas.append(int(solid.sum()))
        ys, xs = np.nonzero(solid)
        placed.append(
            PlacedPill(
                cid,
                (
                    float(x0 + xs.min()),
                    float(y0 + ys.min()),
                    float(x0 + xs.max() + 1),
                    float(y0 + ys.max() + 1),
                ),
            )
        )
    return _camera(rng, canvas), placed


def _cast_shadow(
    canvas: np.ndarray, alpha: np.ndarray, fx: float, fy: float, soft: float, strength: float
) -> None:
    h, w = canvas.shape[:2]
    pad = int(3 * soft) + 1
    blurred = cv2.GaussianBlur(np.pad(alpha, pad), (0, 0), soft)
    x0, y0 = round(fx) - pad, round(fy) - pad
    bh, bw = blurred.shape
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + bw, w), min(y0 + bh, h)
    if cx1 <= cx0 or cy1 <= cy0:
        return
    s = blurred[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    canvas[cy0:cy1, cx0:cx1] *= (1 - strength * s)[..., None]


def _camera(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Uneven light, colour cast, defocus blur and sensor noise -> uint8."""
    h, w = img.shape[:2]
    # 1-D axes broadcast to the full grid: same values as a meshgrid, a fraction of the work
    u = (np.arange(w, dtype=np.float32)[None, :] / w - 0.5) * 2
    v = (np.arange(h, dtype=np.float32)[:, None] / h - 0.5) * 2
    theta = rng.uniform(0, 2 * np.pi)
    gain = 1 + rng.uniform(0.04, 0.22) * (u * np.cos(theta) + v * np.sin(theta)) / 1.4
    gain *= 1 - rng.uniform(0.0, 0.22) * (u * u + v * v) / 2
    gain *= rng.uniform(0.88, 1.1)
    cast = rng.normal(1.0, 0.025, 3).astype(np.float32)
    img = img * gain[..., None] * cast
    if rng.random() < 0.6:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.35, 1.2))
    img += rng.standard_normal((h, w, 3), dtype=np.float32) * np.float32(rng.uniform(1.0, 4.5))
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)

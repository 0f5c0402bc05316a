"""Drawing one pill as an RGBA sprite: outline, 3-D shading, imprint, score line.

Sprites are drawn in the pill's own frame (long axis horizontal) and rotated by the
scene composer. Everything random comes from the ``rng`` passed in, so a photo is
a pure function of its seed.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pillsnap.synth.classes import COLOURS, PillSpec

_SUPERSAMPLE = 3
_PAD = 3
_INKS = ((30, 30, 36), (28, 40, 110), (20, 20, 20))


@lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont:
    # Pillow's bundled font: identical on every machine, so renders stay byte-identical.
    return ImageFont.load_default(size=size)


def _outline(shape: str, w: int, h: int) -> np.ndarray:
    """Anti-aliased alpha in [0,1] of shape ``(h + 2*_PAD, w + 2*_PAD)``."""
    s = _SUPERSAMPLE
    big = Image.new("L", ((w + 2 * _PAD) * s, (h + 2 * _PAD) * s), 0)
    draw = ImageDraw.Draw(big)
    box = (_PAD * s, _PAD * s, (_PAD + w) * s - 1, (_PAD + h) * s - 1)
    if shape in ("round", "oval"):
        draw.ellipse(box, fill=255)
    elif shape == "oblong":
        draw.rounded_rectangle(box, radius=int(h * s * 0.42), fill=255)
    else:  # capsule: a stadium
        draw.rounded_rectangle(box, radius=h * s // 2, fill=255)
    small = big.resize((w + 2 * _PAD, h + 2 * _PAD), Image.BOX)
    return np.asarray(small, np.float32) / 255.0


def _shading(
    shape: str, alpha: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(multiplicative shade, additive highlight) maps that give the pill volume."""
    hh, ww = alpha.shape
    dist = cv2.distanceTransform((alpha > 0.5).astype(np.uint8), cv2.DIST_L2, 3)
    d = dist / max(float(dist.max()), 1.0)
    yy, xx = np.mgrid[0:hh, 0:ww].astype(np.float32)
    if shape == "capsule":
        v = (yy - (hh - 1) / 2) / max((hh - 2 * _PAD) / 2, 1.0)
        cyl = np.sqrt(np.clip(1.0 - v * v, 0.0, 1.0))
        shade = (0.62 + 0.38 * cyl) * (0.85 + 0.15 * np.clip(d * 3.0, 0, 1))
        highlight = 0.35 * np.exp(-(((v + 0.45) / 0.16) ** 2)) * np.clip(d * 4.0, 0, 1)
    else:
        shade = 0.74 + 0.26 * np.sqrt(np.clip(d * 2.2, 0.0, 1.0))
        hx = ww * rng.uniform(0.3, 0.45)
        hy = hh * rng.uniform(0.3, 0.45)
        sig = 0.22 * min(hh, ww)
        highlight = 0.22 * np.exp(-((xx - hx) ** 2 + (yy - hy) ** 2) / (2 * sig * sig))
    return shade.astype(np.float32), highlight.astype(np.float32)


def _base_colour(spec: PillSpec, alpha: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    hh, ww = alpha.shape
    jitter = rng.normal(0.0, 5.0, size=3)
    first = np.clip(np.asarray(COLOURS[spec.colors[0]], np.float32) + jitter, 0, 255)
    rgb = np.empty((hh, ww, 3), np.float32)
    rgb[:] = first
    if len(spec.colors) > 1:
        second = np.clip(np.asarray(COLOURS[spec.colors[1]], np.float32) + jitter, 0, 255)
        rgb[:, ww // 2 :] = second
    # fine surface grain
    rgb += rng.normal(0.0, 2.0, size=(hh, ww, 1)).astype(np.float32)
    return rgb


def _marks(spec: PillSpec, w: int, h: int) -> np.ndarray:
    """Imprint text and score line as an alpha mask in [0,1] (sprite frame)."""
    img = Image.new("L", (w + 2 * _PAD, h + 2 * _PAD), 0)
    draw = ImageDraw.Draw(img)
    cx, cy = _PAD + w / 2, _PAD + h / 2
    size = max(7, int(h * (0.34 if spec.shape != "round" else 0.3)))
    font = _font(size)
    if spec.shape == "capsule":
        draw.text((_PAD + w * 0.27, cy), spec.imprint, fill=255, font=font, anchor="mm")
        draw.line([(cx, _PAD + 1), (cx, _PAD + h - 2)], fill=110, width=1)  # seam
    elif spec.score and len(spec.imprint) >= 2:
        draw.line([(cx, _PAD + h * 0.12), (cx, _PAD + h * 0.88)], fill=255, width=max(1, h // 28))
        half = len(spec.imprint) // 2
        draw.text((cx - w * 0.22, cy), spec.imprint[:half], fill=255, font=font, anchor="mm")
        draw.text((cx + w * 0.22, cy), spec.imprint[half:], fill=255, font=font, anchor="mm")
    else:
        draw.text((cx, cy), spec.imprint, fill=255, font=font, anchor="mm")
    return np.asarray(img, np.float32) / 255.0


def render_pill(spec: PillSpec, px_per_mm: float, rng: np.random.Generator) -> np.ndarray:
    """One pill as a float32 RGBA sprite ``[h, w, 4]`` (RGB 0..255, alpha 0..1), unrotated."""
    length = max(12, round(spec.length_mm * px_per_mm * rng.uniform(0.97, 1.03)))
    width = max(8, round(length / spec.aspect))
    if spec.shape == "round":
        width = length
    alpha = _outline(spec.shape, length, width)
    shade, highlight = _shading(spec.shape, alpha, rng)
    rgb = _base_colour(spec, alpha, rng) * shade[..., None]
    marks = _marks(spec, length, width) * alpha
    if spec.ink:
        ink = np.asarray(_INKS[int(rng.integers(len(_INKS)))], np.float32)
        rgb = rgb * (1 - 0.9 * marks[..., None]) + ink * (0.9 * marks[..., None])
    else:  # debossed: darker groove
        rgb = rgb * (1 - 0.42 * marks[..., None])
    rgb = rgb + (255.0 - rgb) * highlight[..., None]
    return np.dstack([np.clip(rgb, 0, 255), alpha]).astype(np.float32)


def rotate_sprite(sprite: np.ndarray, angle_deg: float) -> np.ndarray:
    """Rotate an RGBA sprite about its centre, growing the canvas to keep every pixel."""
    h, w = sprite.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle_deg, 1.0)
    cos, sin = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(np.ceil(h * sin + w * cos)) + 2, int(np.ceil(h * cos + w * sin)) + 2
    m[0, 2] += nw / 2 - w / 2
    m[1, 2] += nh / 2 - h / 2
    # premultiply so that edge pixels do not pick up black from outside the pill
    pre = sprite.copy()
    pre[..., :3] *= pre[..., 3:4]
    out = cv2.warpAffine(
        pre, m, (nw, nh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    a = out[..., 3:4]
    out[..., :3] = np.where(a > 1e-3, out[..., :3] / np.maximum(a, 1e-3), 0)
    return out

"""The one preprocessing shared by every engine (Torch, ONNX Runtime, TensorRT).

* ``preprocess`` — the classifier's validation transform (resize shorter side,
  center crop, RGB, scale to [0,1], normalise), ``[N,3,H,W]`` float32.
* ``letterbox`` — the detector's input, Ultralytics' own ``LetterBox`` so that
  the Torch path reproduces Ultralytics' predictions exactly.

No other module resizes or normalises images.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pillsnap.exceptions import DataError

if TYPE_CHECKING:
    from pillsnap.config import ClassificationConfig, Config

ImageLike = str | Path | bytes | np.ndarray | Image.Image
_PIL_INTERP = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


@dataclass(frozen=True)
class PreprocessSpec:
    """Everything that defines the classifier input; written into ONNX metadata."""

    resize: int
    crop: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    channel_order: str = "RGB"

    @classmethod
    def from_config(cls, cfg: ClassificationConfig) -> PreprocessSpec:
        p = cfg.preprocessing
        return cls(
            cfg.resize_size,
            cfg.crop_size,
            tuple(p.mean),
            tuple(p.std),
            p.interpolation,
            p.channel_order,
        )

    def to_metadata(self) -> dict[str, str]:
        return {
            "preprocess.resize": str(self.resize),
            "preprocess.crop": str(self.crop),
            "preprocess.mean": ",".join(f"{v:.6g}" for v in self.mean),
            "preprocess.std": ",".join(f"{v:.6g}" for v in self.std),
            "preprocess.interpolation": self.interpolation,
            "preprocess.channel_order": self.channel_order,
        }


DEFAULT_MAX_PIXELS = 89_478_485
"""Pillow's own default limit (about 0.25 GB of RGB): ``images.max_pixels`` in the config."""
_max_pixels = DEFAULT_MAX_PIXELS


def set_max_image_pixels(limit: int) -> None:
    """The one pixel limit for every image pillsnap opens (``images.max_pixels``).

    A larger image is refused before it is decoded (a "decompression bomb" of a few KB
    can expand to gigabytes). Pillow's own check is set to the same limit, so images
    opened by other libraries in the process get the same protection; its warning
    between 1x and 2x the limit is silenced because pillsnap refuses those itself.
    """
    import warnings

    global _max_pixels
    _max_pixels = int(limit)
    Image.MAX_IMAGE_PIXELS = _max_pixels
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def apply_image_limits(cfg: Config) -> None:
    """Apply the config's image settings (called by every command before it opens an image)."""
    set_max_image_pixels(cfg.images.max_pixels)


def max_image_pixels() -> int:
    return _max_pixels


def open_image(item: str | Path | bytes) -> Image.Image:
    """Open (header only, nothing decoded yet) a path or bytes, or raise ``DataError``.

    The message is the skip reason a user sees: it says what the file is, not which
    optional decoder failed to import.
    """
    name = "<bytes>" if isinstance(item, (bytes, bytearray)) else str(item)
    try:
        img = _pil_open(name)(io.BytesIO(item) if isinstance(item, (bytes, bytearray)) else item)
    except Image.DecompressionBombError as exc:
        raise image_error(name, _too_large(str(exc))) from exc
    except (UnidentifiedImageError, ImportError) as exc:
        # ImportError: once ultralytics is imported, its PIL.Image.open patch tries the absent
        # pi_heif plugin on any unidentifiable file; the file is simply not an image we can read.
        raise image_error(name, _not_an_image(name)) from exc
    except (OSError, ValueError) as exc:
        raise image_error(name, str(getattr(exc, "strerror", None) or exc)) from exc
    w, h = img.size
    if w * h > _max_pixels:
        img.close()
        raise image_error(name, _too_large(f"{w}x{h} = {w * h:,} pixels"))
    return img


def _pil_open(name: str) -> Callable[..., Image.Image]:
    """Pillow's own ``Image.open``, not the one Ultralytics patches in on import.

    The patch retries every unidentifiable file after trying to import (and, if allowed,
    pip-install) the optional pi_heif plugin, and warns on the console each time: noise
    for a file that is simply not an image. HEIF/HEIC files keep the patched opener.
    """
    import sys

    if name.lower().endswith((".heic", ".heif")):
        return Image.open
    patches = sys.modules.get("ultralytics.utils.patches")
    return getattr(patches, "_image_open", None) or Image.open


def image_error(name: str, reason: str) -> DataError:
    """``DataError`` "cannot read image NAME: REASON"; ``.reason`` is what a skip list shows."""
    err = DataError(f"cannot read image {name}: {reason}")
    err.reason = reason  # type: ignore[attr-defined]
    return err


def _too_large(size: str) -> str:
    return (
        f"too large ({size}); the limit is {_max_pixels:,} pixels (config key "
        "`images.max_pixels`): raise it for trusted images, or downscale the file"
    )


def _not_an_image(name: str) -> str:
    if name.lower().endswith((".heic", ".heif")):
        return "HEIF/HEIC photos need the optional pi-heif package (pip install pi-heif)"
    return "not an image (unknown or unsupported file format)"


def load_image(item: ImageLike) -> Image.Image:
    """Decode a path, bytes, HWC uint8 RGB array or PIL image into an RGB PIL image.

    EXIF orientation is applied, as phone photos need it. Raises ``DataError``
    naming the file when it cannot be decoded or is above the pixel limit.
    """
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    if isinstance(item, np.ndarray):
        if item.ndim != 3 or item.shape[2] != 3:
            raise DataError(f"expected an HxWx3 RGB uint8 array, got shape {item.shape}")
        return Image.fromarray(item.astype(np.uint8), "RGB")
    img = open_image(item)
    try:
        img.load()
        return ImageOps.exif_transpose(img).convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        name = "<bytes>" if isinstance(item, (bytes, bytearray)) else str(item)
        raise image_error(name, f"damaged or truncated image ({exc})") from exc


def preprocess_one(image: Image.Image, spec: PreprocessSpec) -> np.ndarray:
    """One RGB PIL image -> ``[3,H,W]`` float32, exactly the validation transform."""
    w, h = image.size
    scale = spec.resize / min(w, h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), _PIL_INTERP[spec.interpolation])
    left = round((new_w - spec.crop) / 2.0)
    top = round((new_h - spec.crop) / 2.0)
    image = image.crop((left, top, left + spec.crop, top + spec.crop))
    arr = np.asarray(image, dtype=np.float32) / 255.0
    arr = (arr - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def preprocess(items: Iterable[ImageLike], spec: PreprocessSpec) -> np.ndarray:
    """Images (paths, bytes, arrays, PIL) -> ``[N,3,crop,crop]`` float32 classifier batch."""
    arrays = [preprocess_one(load_image(it), spec) for it in items]
    if not arrays:
        return np.zeros((0, 3, spec.crop, spec.crop), np.float32)
    return np.stack(arrays)


@dataclass(frozen=True)
class LetterboxInfo:
    """How an original image maps into the letterboxed detector input."""

    orig_shape: tuple[int, int]  # (h, w)
    gain: float
    pad: tuple[float, float]  # (left, top)


def letterbox(image: np.ndarray | Image.Image, imgsz: int) -> tuple[np.ndarray, LetterboxInfo]:
    """RGB image -> (``[3,imgsz,imgsz]`` float32 in [0,1], mapping back to the original).

    Uses Ultralytics' ``LetterBox`` (square, centred, grey 114 padding), the same
    transform its predictor applies to exported models.
    """
    from ultralytics.data.augment import LetterBox

    rgb = np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else image
    h, w = rgb.shape[:2]
    boxed = LetterBox(new_shape=(imgsz, imgsz), auto=False, stride=32)(image=rgb)
    gain = min(imgsz / h, imgsz / w)
    pad = ((imgsz - round(w * gain)) / 2, (imgsz - round(h * gain)) / 2)
    chw = np.ascontiguousarray(boxed.transpose(2, 0, 1), dtype=np.float32) / 255.0
    return chw, LetterboxInfo((h, w), gain, pad)


def letterbox_batch(
    images: Iterable[np.ndarray | Image.Image], imgsz: int
) -> tuple[np.ndarray, list[LetterboxInfo]]:
    """Several RGB images -> ``[N,3,imgsz,imgsz]`` float32 and their letterbox infos."""
    out = [letterbox(img, imgsz) for img in images]
    if not out:
        return np.zeros((0, 3, imgsz, imgsz), np.float32), []
    return np.stack([o[0] for o in out]), [o[1] for o in out]


def crop_box(image: Image.Image, box_xyxy: Iterable[float], padding: float = 0.0) -> Image.Image:
    """Cut a detection box out of a photo for the classifier.

    The box grows by ``padding`` x its width/height on each side (config key
    ``classification.preprocessing.crop_padding``) and is clipped to the image, then
    rounded outwards to whole pixels. Training crops and inference crops both come
    from here, so the classifier sees the same framing in both.
    """
    return image.crop(crop_rect(box_xyxy, image.size, padding))


def crop_rect(
    box_xyxy: Iterable[float], image_size: tuple[int, int], padding: float = 0.0
) -> tuple[int, int, int, int]:
    """The whole-pixel ``(left, top, right, bottom)`` that ``crop_box`` cuts from a ``(w, h)`` image.

    Two boxes with the same rectangle give the same crop, pixel for pixel.
    """
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    if not (x2 > x1 and y2 > y1):
        raise DataError(
            f"box {[x1, y1, x2, y2]} is empty; expected x1 < x2 and y1 < y2 (xyxy pixels)"
        )
    if padding < 0:
        raise DataError(f"crop padding must be >= 0, got {padding}")
    pw, ph = (x2 - x1) * padding, (y2 - y1) * padding
    w, h = image_size
    left, top = max(0, int(np.floor(x1 - pw))), max(0, int(np.floor(y1 - ph)))
    right, bottom = min(w, int(np.ceil(x2 + pw))), min(h, int(np.ceil(y2 + ph)))
    if right <= left or bottom <= top:
        raise DataError(f"box {[x1, y1, x2, y2]} lies outside the {w}x{h} image")
    return left, top, right, bottom

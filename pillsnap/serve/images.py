"""Uploaded bytes -> an RGB photo, refusing what must not reach the models.

An upload is untrusted: its Content-Type may lie, it may be cut short, empty, or a
few kilobytes declaring a billion pixels (a decompression bomb). So:

* the real format comes from the bytes' signature, and only JPEG, PNG and WebP are
  decoded, by their own Pillow plugin (no sniffing of other formats, and no global
  ``Image.open`` hooks such as Ultralytics' HEIF retry);
* the pixel count is read from the header and checked against
  ``serve.max_image_pixels`` *before* anything is decoded, so memory stays bounded;
  Pillow's own bomb warning is an error here too;
* truncated data is an error (``LOAD_TRUNCATED_IMAGES`` stays off), and JPEG's
  ``verify()`` is not trusted (it passes cut files): the pixels are decoded for real.

The decoded photo then goes through ``pillsnap.preprocess`` like any other image.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps

from pillsnap.exceptions import UserInputError

# Magic bytes -> Pillow format name. WebP is RIFF....WEBP.
_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
)
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP")
IMAGE_CONTENT_TYPES = ("image/jpeg", "image/png", "image/webp")


class BadImage(UserInputError):
    """The upload is not a usable photo; ``reason`` is a short machine-readable tag."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Photo:
    image: Image.Image
    format: str
    width: int
    height: int


def sniff_format(data: bytes) -> str | None:
    """The format the bytes really are (by signature), or None."""
    for magic, name in _SIGNATURES:
        if data.startswith(magic):
            return name
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _plugin(fmt: str) -> type[Image.Image]:
    if fmt == "JPEG":
        from PIL.JpegImagePlugin import JpegImageFile

        return JpegImageFile
    if fmt == "PNG":
        from PIL.PngImagePlugin import PngImageFile

        return PngImageFile
    from PIL.WebPImagePlugin import WebPImageFile

    return WebPImageFile


def decode_photo(data: bytes, max_pixels: int, name: str = "upload") -> Photo:
    """Decode one upload; ``BadImage`` names what is wrong (empty, format, size, corrupt)."""
    if not data:
        raise BadImage(f"{name}: empty body (0 bytes); send the photo's bytes", "empty")
    fmt = sniff_format(data)
    if fmt is None:
        raise BadImage(
            f"{name}: not a JPEG, PNG or WebP image (its first bytes match none of them, "
            "whatever the Content-Type says)",
            "not_an_image",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = _plugin(fmt)(io.BytesIO(data))
    except (SyntaxError, OSError, ValueError, EOFError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"{name}: corrupt {fmt} header: {exc}", "corrupt") from None
    width, height = img.size
    if width <= 0 or height <= 0:
        raise BadImage(f"{name}: {fmt} declares an empty {width}x{height} image", "corrupt")
    if width * height > max_pixels:
        raise BadImage(
            f"{name}: {width}x{height} = {width * height} pixels exceeds the limit of "
            f"{max_pixels} (serve.max_image_pixels); send a smaller photo",
            "too_many_pixels",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
        img = ImageOps.exif_transpose(img)
        rgb = img.convert("RGB")
    except (SyntaxError, OSError, ValueError, EOFError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"{name}: corrupt or truncated {fmt} data: {exc}", "corrupt") from None
    return Photo(rgb, fmt, width, height)

"""Upload validation without a server: the real format, the pixel limit before decoding,
truncation, and the formats that are refused."""

from __future__ import annotations

import io

import pytest
from _serving import photo_bytes
from PIL import Image

from pillsnap.serve.images import BadImage, decode_photo, sniff_format


def encoded(fmt: str, size=(64, 48), **kw) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_accepted_formats_decode_to_rgb(fmt):
    photo = decode_photo(encoded(fmt), max_pixels=10_000)
    assert (photo.format, photo.width, photo.height, photo.image.mode) == (fmt, 64, 48, "RGB")
    assert sniff_format(encoded(fmt)) == fmt


def test_the_bytes_decide_not_the_name():
    real = decode_photo(photo_bytes(), max_pixels=10**7, name="photo.png")
    assert real.format == "JPEG"
    for data in (encoded("GIF"), encoded("BMP"), encoded("TIFF"), b"<svg></svg>", b"\0" * 64):
        with pytest.raises(BadImage, match="not a JPEG, PNG or WebP") as exc:
            decode_photo(data, max_pixels=10**7)
        assert exc.value.reason == "not_an_image"


def test_pixel_limit_is_checked_before_decoding():
    with pytest.raises(BadImage, match="64x48 = 3072 pixels exceeds the limit of 3000") as exc:
        decode_photo(encoded("PNG"), max_pixels=3000)
    assert exc.value.reason == "too_many_pixels"
    assert decode_photo(encoded("PNG"), max_pixels=3072).width == 64


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_truncated_and_empty_uploads_are_named(fmt):
    data = encoded(fmt, size=(200, 150), **({"quality": 95} if fmt == "JPEG" else {}))
    for cut in (len(data) // 2, 40, 12):
        with pytest.raises(BadImage, match=f"{fmt}|not a JPEG") as exc:
            decode_photo(data[:cut], max_pixels=10**6, name="cut")
        assert exc.value.reason in {"corrupt", "not_an_image"} and "cut:" in str(exc.value)
    with pytest.raises(BadImage, match="empty body") as exc:
        decode_photo(b"", max_pixels=10)
    assert exc.value.reason == "empty"


def test_exif_rotation_is_applied():
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    Image.new("RGB", (64, 48)).save(buf, "JPEG", exif=exif)
    photo = decode_photo(buf.getvalue(), max_pixels=10**6)
    assert photo.image.size == (48, 64) and (photo.width, photo.height) == (64, 48)

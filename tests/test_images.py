"""The one normalisation path: orientation, colour modes, limits, re-encoding."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from search_core.errors import ImageError
from search_core.images import encode_image, load_image, looks_like_image, resize_within


def _encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_exif_rotation_is_applied_before_anything_else() -> None:
    # A "phone photo": stored landscape 80x40 with EXIF orientation 6 (rotate 90° clockwise),
    # red on the left half of the stored pixels -> red on the top half once oriented.
    stored = Image.new("RGB", (80, 40), "blue")
    stored.paste((255, 0, 0), (0, 0, 40, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    image = load_image(_encode(stored, "JPEG", exif=exif.tobytes(), quality=95))
    assert image.size == (40, 80)
    top, bottom = np.asarray(image)[5, 20], np.asarray(image)[75, 20]
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("CMYK", "JPEG"),
        ("L", "PNG"),
        ("LA", "PNG"),
        ("RGBA", "PNG"),
        ("P", "PNG"),
        ("I;16", "PNG"),
        ("1", "PNG"),
        ("RGB", "WEBP"),
        ("RGB", "GIF"),
        ("RGB", "BMP"),
        ("RGB", "TIFF"),
    ],
)
def test_every_mode_becomes_rgb(mode: str, fmt: str) -> None:
    if mode == "I;16":
        source = Image.fromarray((np.arange(64 * 48).reshape(48, 64) * 20).astype(np.uint16))
    else:
        source = Image.new("RGB", (64, 48), (200, 30, 30)).convert(mode)
    image = load_image(_encode(source, fmt))
    assert image.mode == "RGB" and image.size == (64, 48)


def test_sixteen_bit_keeps_its_contrast() -> None:
    ramp = np.tile(np.linspace(0, 65535, 64, dtype=np.uint16), (32, 1))
    image = load_image(_encode(Image.fromarray(ramp), "PNG"))
    grey = np.asarray(image)[:, :, 0]
    assert grey.min() < 10 and grey.max() > 245


def test_transparent_pixels_become_white() -> None:
    source = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    source.paste((255, 0, 0, 255), (8, 8, 24, 24))
    pixels = np.asarray(load_image(_encode(source, "PNG")))
    assert tuple(pixels[0, 0]) == (255, 255, 255)
    assert tuple(pixels[16, 16]) == (255, 0, 0)


def test_long_side_is_capped() -> None:
    image = load_image(_encode(Image.new("RGB", (3000, 1500), "green"), "JPEG"), max_side=1000)
    assert max(image.size) == 1000


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "empty"),
        (b"<!DOCTYPE html><html><body>hi</body></html>", "HTML"),
        (b"%PDF-1.4\n1 0 obj", "PDF"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>', "SVG"),
    ],
)
def test_non_images_get_a_clear_message(payload: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        load_image(payload)


def test_truncated_and_bomb_and_tiny_images_are_refused() -> None:
    jpeg = _encode(Image.new("RGB", (400, 300), "red"), "JPEG")
    with pytest.raises(ImageError, match="corrupt or truncated"):
        load_image(jpeg[: len(jpeg) // 2])
    with pytest.raises(ImageError, match="too large"):
        load_image(_encode(Image.new("1", (8000, 8000)), "PNG"), max_pixels=10_000_000)
    with pytest.raises(ImageError, match="too small"):
        load_image(_encode(Image.new("RGB", (1, 1)), "PNG"))


def test_signature_sniffing() -> None:
    assert looks_like_image(_encode(Image.new("RGB", (4, 4)), "PNG")[:16])
    assert looks_like_image(_encode(Image.new("RGB", (4, 4)), "WEBP")[:16])
    assert not looks_like_image(b"hello world, not an image")


def test_encode_under_a_byte_limit_and_min_side() -> None:
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (1200, 1600, 3), np.uint8))
    data = encode_image(noise, max_bytes=200_000)
    assert len(data) <= 200_000
    assert Image.open(io.BytesIO(data)).format == "JPEG"
    small = resize_within(Image.new("RGB", (40, 400)), max_side=None, min_side=80)
    assert min(small.size) == 80

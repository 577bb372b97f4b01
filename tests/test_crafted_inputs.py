"""Inputs found by probing the REST API that answered 500 (or a wrong status) instead of a
clear 400: a NaN in a manual box, digit-like object numbers ``int()`` rejects, and a PNG
Pillow refuses for its oversized text chunk (400, not 413: the upload is small)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from search_core.api import parse_region, status_of
from search_core.crop import crop
from search_core.errors import SearchError
from search_core.images import load_image
from search_core.pipeline import AnalyzedImage
from search_core.types import Box

REPO = Path(__file__).resolve().parents[1]
PHOTO = REPO / "samples" / "queries" / "hand-granny-smith.jpg"


@pytest.fixture(scope="module")
def analyzed() -> AnalyzedImage:
    image = load_image(PHOTO.read_bytes())
    return AnalyzedImage(sha256="probe", image=image, detections=[])


@pytest.mark.parametrize(
    "text", ["nan,nan,nan,nan", "0,0,nan,0.5", "nan,0,1,1", "0,0,1,NaN"]
)
def test_a_box_with_nan_is_bad_input_not_a_crash(analyzed: AnalyzedImage, text: str) -> None:
    """POST /api/search object=nan,0,1,1 answered 500 (ValueError: cannot convert float NaN
    to integer, raised in Box.to_pixels when the region is cropped)."""
    try:
        region = parse_region(text, analyzed)
    except SearchError:
        return  # 400 with a message: fine
    assert isinstance(region, Box)
    assert all(math.isfinite(v) for v in (region.left, region.top, region.width, region.height))
    crop(analyzed.image, region)  # must not raise ValueError


@pytest.mark.parametrize(
    "text", ["\u00b2", "\u2460", pytest.param("9" * 5000, id="5000-digits")]
)
def test_digit_like_object_numbers_are_bad_input_not_a_crash(
    analyzed: AnalyzedImage, text: str
) -> None:
    """``str.isdigit`` is true for "²" and "①" but ``int()`` rejects them, and a 5,000-digit
    number exceeds Python's int-string limit: each answered 500 (uncaught ValueError)."""
    with pytest.raises(SearchError):
        parse_region(text, analyzed)


def test_a_small_png_with_a_huge_text_chunk_is_400_not_413() -> None:
    """A 150 KB PNG whose zTXt chunk inflates past Pillow's MAX_TEXT_CHUNK is refused as
    "corrupt or truncated (Decompressed data too large ...)"; ``status_of`` matched "too
    large" in that message and answered 413 Payload Too Large for a small upload."""
    info = PngImagePlugin.PngInfo()
    info.add_text("junk", "A" * 5_000_000, zip=True)
    buffer = io.BytesIO()
    Image.open(PHOTO).save(buffer, format="PNG", pnginfo=info)
    assert len(buffer.getvalue()) < 1_000_000
    with pytest.raises(SearchError) as caught:
        load_image(buffer.getvalue())
    assert status_of(caught.value) == 400, str(caught.value)

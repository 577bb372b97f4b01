"""Crops are clamped, padded and refused when too small; boxes drawn on the same frame."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from search_core.crop import box_from_pixels, crop, draw_detections
from search_core.errors import CropError
from search_core.types import Box, Detection


def test_crop_pads_and_clamps() -> None:
    image = Image.new("RGB", (200, 100))
    assert crop(image, None) is image
    inner = crop(image, Box(0.25, 0.25, 0.5, 0.5), pad=0.1)
    assert inner.size == (120, 60)
    edge = crop(image, Box(-0.2, 0.5, 0.5, 0.9), pad=0.0)  # Rekognition may return < 0, > 1
    assert edge.size == (60, 50)


def test_too_small_crop_is_refused() -> None:
    with pytest.raises(CropError, match="too small"):
        crop(Image.new("RGB", (100, 100)), Box(0.5, 0.5, 0.01, 0.01))


def test_manual_box_in_any_drag_direction() -> None:
    box = box_from_pixels(80, 60, 20, 10, 100, 100)
    assert (box.left, box.top, box.width, box.height) == pytest.approx((0.2, 0.1, 0.6, 0.5))


def test_boxes_are_drawn_where_the_detection_is() -> None:
    image = Image.new("RGB", (300, 200), (0, 0, 0))
    drawn = np.asarray(draw_detections(image, [Detection("Shoe", 90.0, Box(0.5, 0.5, 0.4, 0.4))]))
    assert drawn[150:190, 150:270].any()  # the box outline
    assert not drawn[10:60, 10:100].any()  # far away stays black

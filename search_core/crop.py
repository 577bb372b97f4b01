"""Crops and box drawing on the oriented image (OpenCV arrays, RGB order)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image

from search_core.errors import CropError
from search_core.types import Box, Detection

MIN_CROP_SIDE = 16
_PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (0, 128, 128),
    (170, 110, 40),
]


def crop(
    image: Image.Image, box: Box | None, *, pad: float = 0.05, min_side: int = MIN_CROP_SIDE
) -> Image.Image:
    """The region of ``box`` (fractions) padded by ``pad`` of its size on each side and clamped
    to the image; ``None`` means the whole image. A little context around a tight detector box
    makes embeddings of the crop closer to catalogue photos, which have margins."""
    if box is None:
        return image
    box = box.clamped()
    padded = Box(
        box.left - box.width * pad,
        box.top - box.height * pad,
        box.width * (1 + 2 * pad),
        box.height * (1 + 2 * pad),
    )
    x0, y0, x1, y1 = padded.to_pixels(image.width, image.height)
    if x1 - x0 < min_side or y1 - y0 < min_side:
        raise CropError(
            f"the selected region is too small ({x1 - x0}×{y1 - y0} px); choose a region of at "
            f"least {min_side}×{min_side} px"
        )
    array = np.asarray(image)
    return Image.fromarray(np.ascontiguousarray(array[y0:y1, x0:x1]))


def box_from_pixels(x0: float, y0: float, x1: float, y1: float, width: int, height: int) -> Box:
    """A fractional box from pixel corners in any order (a user's drag can go either way)."""
    left, right = sorted((x0, x1))
    top, bottom = sorted((y0, y1))
    return Box(
        left / width, top / height, (right - left) / width, (bottom - top) / height
    ).clamped()


def draw_detections(
    image: Image.Image, detections: Sequence[Detection], captions: Sequence[str] = ()
) -> Image.Image:
    """The image with numbered boxes, matching the numbers in the object dropdown. A caption
    (e.g. the catalogue's best label, "Kiwi 46 %") replaces the detector's label on its box."""
    canvas = np.ascontiguousarray(np.asarray(image).copy())
    thickness = max(2, round(max(image.size) / 300))
    scale = max(0.5, max(image.size) / 800)
    for number, detection in enumerate(detections, start=1):
        color = _PALETTE[(number - 1) % len(_PALETTE)]
        x0, y0, x1, y1 = detection.box.to_pixels(image.width, image.height)
        cv2.rectangle(canvas, (x0, y0), (x1, y1), color, thickness)
        caption = captions[number - 1] if number - 1 < len(captions) else ""
        text = f"{number} {caption or detection.label}"
        (tw, th), base = cv2.getTextSize(
            text, cv2.FONT_HERSHEY_SIMPLEX, scale, max(1, thickness // 2)
        )
        ty = max(y0, th + base + 2)
        cv2.rectangle(canvas, (x0, ty - th - base - 2), (x0 + tw + 4, ty), color, -1)
        cv2.putText(
            canvas,
            text,
            (x0 + 2, ty - base),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (255, 255, 255),
            max(1, thickness // 2),
            cv2.LINE_AA,
        )
    return Image.fromarray(canvas)

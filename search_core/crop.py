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


Rect = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels


def _overlaps(a: Rect, b: Rect) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_labels(
    boxes: Sequence[Rect], sizes: Sequence[tuple[int, int]], width: int, height: int
) -> list[Rect]:
    """A rectangle for each box's label that overlaps no other label: tried above the box's
    top-left corner, inside it, below it and at the other corners, then slid down the box's
    left edge. Why: on a shelf, boxes of neighbouring products share edges, and labels all
    drawn at the top-left hid each other's numbers ("3 Car" under "4 Car")."""
    placed: list[Rect] = []
    for (x0, y0, x1, y1), (tw, th) in zip(boxes, sizes, strict=True):
        candidates = [
            (x0, y0 - th),  # above, left
            (x0, y0),  # inside, top left
            (x0, y1),  # below, left
            (x1 - tw, y0 - th),  # above, right
            (x1 - tw, y1 - th),  # inside, bottom right
            (x0, y1 - th),  # inside, bottom left
            (x1 - tw, y0),  # inside, top right
            (x1 - tw, y1),  # below, right
        ]
        candidates += [(x0, y) for y in range(y0, y1, max(1, th // 2))]
        candidates += [(x, y) for y in range(0, height, th) for x in (x0, x1 - tw, x1, x0 - tw)]
        chosen: Rect | None = None
        for cx, cy in candidates:
            cx = min(max(cx, 0), max(width - tw, 0))
            cy = min(max(cy, 0), max(height - th, 0))
            rect = (cx, cy, cx + tw, cy + th)
            if not any(_overlaps(rect, other) for other in placed):
                chosen = rect
                break
        if chosen is None:  # no free spot anywhere: the box's own corner
            cx, cy = min(max(x0, 0), max(width - tw, 0)), min(max(y0, 0), max(height - th, 0))
            chosen = (cx, cy, cx + tw, cy + th)
        placed.append(chosen)
    return placed


def draw_detections(
    image: Image.Image,
    detections: Sequence[Detection],
    captions: Sequence[str] = (),
    selected: int | None = None,
    region: Box | None = None,
) -> Image.Image:
    """The image with numbered boxes (numbers match the object dropdown). A caption (e.g. the
    catalogue's best label, "Kiwi 46 %") replaces the detector's label on its box. With a
    ``selected`` detection or a manual ``region``, everything outside it is dimmed and its box
    drawn thick, so a user sees at once what the search is about."""
    canvas = np.ascontiguousarray(np.asarray(image.convert("RGB")).copy())
    width, height = image.size
    thickness = max(2, round(max(image.size) / 300))
    scale = max(0.45, max(image.size) / 1000)
    weight = max(1, thickness // 2)
    focus = (
        region
        if region is not None
        else (
            detections[selected].box
            if selected is not None and 0 <= selected < len(detections)
            else None
        )
    )
    if focus is not None:
        fx0, fy0, fx1, fy1 = focus.to_pixels(width, height)
        dimmed = (canvas * 0.4).astype(np.uint8)
        dimmed[fy0:fy1, fx0:fx1] = canvas[fy0:fy1, fx0:fx1]
        canvas = dimmed
    boxes = [d.box.to_pixels(width, height) for d in detections]
    texts = [
        f"{n} {(captions[n - 1] if n - 1 < len(captions) else '') or d.label}"
        for n, d in enumerate(detections, start=1)
    ]
    sizes = []
    for text in texts:
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, weight)
        sizes.append((tw + 6, th + base + 6))
    labels = place_labels(boxes, sizes, width, height)
    colors = []
    for number, (x0, y0, x1, y1) in enumerate(boxes):
        color = _PALETTE[number % len(_PALETTE)]
        chosen = number == selected and region is None
        if focus is not None and not chosen:
            red, green, blue = color
            color = (int(red * 0.55), int(green * 0.55), int(blue * 0.55))
        colors.append(color)
        cv2.rectangle(canvas, (x0, y0), (x1, y1), color, thickness * (2 if chosen else 1))
    # labels last: no box outline may cross a number
    for text, rect, color in zip(texts, labels, colors, strict=True):
        cv2.rectangle(canvas, rect[:2], (rect[2] - 1, rect[3] - 1), color, -1)
        cv2.putText(
            canvas,
            text,
            (rect[0] + 3, rect[3] - 3 - (rect[3] - rect[1]) // 5),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (255, 255, 255),
            weight,
            cv2.LINE_AA,
        )
    if region is not None:
        x0, y0, x1, y1 = region.to_pixels(width, height)
        cv2.rectangle(canvas, (x0, y0), (x1, y1), (255, 255, 255), thickness * 2)
    return Image.fromarray(canvas)


def object_at(detections: Sequence[Detection], x: float, y: float) -> int | None:
    """The detection a click at (x, y) (fractions of the image) means: the smallest box that
    contains the point, so a click on one product of a shelf picks that product and not the
    shelf around it. None when the click hits no box."""
    inside = [
        (d.box.area, number)
        for number, d in enumerate(detections)
        if d.box.left <= x <= d.box.left + d.box.width
        and d.box.top <= y <= d.box.top + d.box.height
    ]
    return min(inside)[1] if inside else None

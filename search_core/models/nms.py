"""Class-aware non-maximum suppression, shared by the local detectors and the merged detector.

OpenCV's NMS is used rather than a hand-written loop; boxes here are fractions of the image
(x0, y0, x1, y1), which OpenCV takes as floating-point (x, y, w, h) rectangles.
"""

from __future__ import annotations

import cv2
import numpy as np


def class_aware_nms(
    boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou: float, max_out: int
) -> np.ndarray:
    """Indices kept, best score first. ``boxes`` is ``[N,4]`` (x0, y0, x1, y1)."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    xywh = np.stack(
        [boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1
    )
    kept = cv2.dnn.NMSBoxesBatched(
        xywh.astype(np.float64).tolist(),
        scores.astype(np.float64).tolist(),
        class_ids.astype(np.int64).tolist(),
        0.0,
        iou,
    )
    keep = np.asarray(kept, dtype=np.int64).reshape(-1)
    return keep[np.argsort(-scores[keep], kind="stable")][:max_out]

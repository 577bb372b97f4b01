"""Shared post-processing of the local detectors: class-aware NMS and raw -> Detection.

OpenCV's NMS is used rather than a hand-written loop; boxes here are fractions of the image
(x0, y0, x1, y1), which OpenCV takes as floating-point (x, y, w, h) rectangles.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from search_core.models.base import OnnxModel
from search_core.types import Box, Detection


def class_aware_nms(
    boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou: float, max_out: int
) -> np.ndarray:
    """Indices kept, best score first. ``boxes`` is ``[N,4]`` (x0, y0, x1, y1)."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    xywh = np.stack(
        [boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1
    )
    keep = cv2.dnn.NMSBoxesBatched(
        xywh.astype(np.float64).tolist(),
        scores.astype(np.float64).tolist(),
        class_ids.astype(np.int64).tolist(),
        0.0,
        iou,
    )
    keep = np.asarray(keep, dtype=np.int64).reshape(-1)
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    return keep[:max_out]


class OnnxDetector(OnnxModel):
    """What the single-model local detectors share: thresholds, and turning raw boxes into
    Rekognition-shaped :class:`Detection` instances after class-aware NMS."""

    #: added to a class id to index :attr:`labels` (1 when line 0 is a background class)
    label_offset: int = 0
    name: str = ""

    def __init__(
        self,
        models_dir: Path,
        threads: int = 0,
        min_score: float = 0.2,
        iou: float = 0.5,
        max_detections: int = 50,
    ) -> None:
        super().__init__(models_dir, threads)
        self.min_score = min_score
        self.iou = iou
        self.max_detections = max_detections

    def to_detections(
        self, boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray
    ) -> list[Detection]:
        """NMS, then one Detection per kept box; ``boxes`` are (x0, y0, x1, y1) fractions."""
        keep = class_aware_nms(boxes, scores, class_ids, self.iou, self.max_detections)
        labels = self.labels
        detections = []
        for i in keep:
            x0, y0, x1, y1 = (float(v) for v in boxes[i])
            detections.append(
                Detection(
                    label=labels[int(class_ids[i]) + self.label_offset],
                    confidence=round(float(scores[i]) * 100.0, 2),
                    box=Box(x0, y0, x1 - x0, y1 - y0).clamped(),
                    model=self.name,
                )
            )
        return detections

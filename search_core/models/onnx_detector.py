"""The base of the single-model local detectors (Objectron SSD, NanoDet).

Each model decodes its own raw outputs into boxes; what is left is the same for all of them --
score threshold, class-aware NMS, and turning each kept box into a Rekognition-shaped
:class:`Detection` -- so it is written here once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from search_core.models.base import OnnxModel
from search_core.models.nms import class_aware_nms
from search_core.types import Box, Detection


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

"""The offline detector: Objectron SSD (Open Images) and NanoDet (COCO) merged into one list.

The two label sets overlap (person/Person, dog/Dog, cup/Mug/Coffee cup ...). Every raw label is
mapped to one display label and a *group* of equivalent labels; boxes of the same group that
overlap (IoU >= 0.5) are one object, whichever model saw it, and the most confident label wins.
Display labels are title-cased like Rekognition's, so the UI and the evaluation code treat the
local and the AWS detector the same way.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

import numpy as np
from PIL import Image

from search_core.interfaces import Detector, Loadable
from search_core.models.nms import class_aware_nms
from search_core.types import Detection

# raw label (lower case, either model) -> (display label, group of equivalent labels)
# Labels not listed keep their own name (title-cased) and form a group of their own.
SYNONYMS: dict[str, tuple[str, str]] = {
    "person": ("Person", "person"),
    "dog": ("Dog", "dog"),
    "cat": ("Cat", "cat"),
    "bicycle": ("Bicycle", "bicycle"),
    "stationary bicycle": ("Stationary Bicycle", "bicycle"),
    "car": ("Car", "vehicle"),
    "truck": ("Truck", "vehicle"),
    "bus": ("Bus", "vehicle"),
    "vehicle": ("Vehicle", "vehicle"),
    "chair": ("Chair", "chair"),
    "couch": ("Couch", "couch"),
    "laptop": ("Laptop", "laptop"),
    "book": ("Book", "book"),
    "bottle": ("Bottle", "bottle"),
    "cup": ("Cup", "cup"),
    "mug": ("Mug", "cup"),
    "coffee cup": ("Coffee Cup", "cup"),
    "dining table": ("Table", "table"),
    "table": ("Table", "table"),
    "desk": ("Desk", "table"),
    "tv": ("Television", "screen"),
    "computer monitor": ("Computer Monitor", "screen"),
    "mouse": ("Computer Mouse", "mouse"),
    "computer mouse": ("Computer Mouse", "mouse"),
    "cow": ("Cow", "cattle"),
    "cattle": ("Cattle", "cattle"),
    "footwear": ("Footwear", "footwear"),
    "boot": ("Boot", "footwear"),
    "high heels": ("High Heels", "footwear"),
    "cell phone": ("Mobile Phone", "cell phone"),
    "hair drier": ("Hair Dryer", "hair drier"),
    "sports ball": ("Ball", "sports ball"),
    "motorcycle": ("Motorcycle", "motorcycle"),
}

# display label -> Rekognition-style parent labels (more general concepts)
PARENTS: dict[str, tuple[str, ...]] = {
    "Boot": ("Footwear",),
    "High Heels": ("Footwear",),
    "Car": ("Vehicle",),
    "Truck": ("Vehicle",),
    "Bus": ("Vehicle",),
    "Motorcycle": ("Vehicle",),
    "Mug": ("Cup",),
    "Coffee Cup": ("Cup",),
    "Desk": ("Furniture",),
    "Table": ("Furniture",),
    "Chair": ("Furniture",),
    "Couch": ("Furniture",),
    "Stationary Bicycle": ("Bicycle",),
}


def canonical(label: str) -> tuple[str, str]:
    """(display label, equivalence group) of a raw model label."""
    key = label.strip().lower()
    if key in SYNONYMS:
        return SYNONYMS[key]
    return string.capwords(key), key


def known_groups(detector_labels: Sequence[str]) -> set[str]:
    """Equivalence groups a detector can report, from its raw label list."""
    return {canonical(label)[1] for label in detector_labels if label and label != "???"}


class MergedDetector:
    """Runs several detectors and merges their instances (one per object, best label first)."""

    def __init__(
        self,
        detectors: Sequence[Detector],
        min_confidence: float = 35.0,
        max_instances: int = 20,
        iou: float = 0.5,
        same_box_iou: float = 0.85,
        nested_overlap: float = 0.8,
    ) -> None:
        self.detectors = list(detectors)
        self.min_confidence = min_confidence
        self.max_instances = max_instances
        self.iou = iou
        self.same_box_iou = same_box_iou
        self.nested_overlap = nested_overlap
        self.name = "+".join(d.name for d in self.detectors) or "none"

    @property
    def loaded(self) -> bool:
        return all(d.loaded for d in self.detectors if isinstance(d, Loadable))

    def load(self) -> None:
        for detector in self.detectors:
            if isinstance(detector, Loadable):
                detector.load()

    def normalise(self, detection: Detection) -> tuple[Detection, str]:
        display, group = canonical(detection.label)
        parents = tuple(dict.fromkeys(detection.parents + PARENTS.get(display, ())))
        normalised = Detection(
            label=display,
            confidence=detection.confidence,
            box=detection.box.clamped(),
            parents=parents,
            categories=detection.categories,
            model=detection.model,
        )
        return normalised, group

    def merge(self, detections: Sequence[Detection]) -> list[Detection]:
        """Confidence filter, label mapping and cross-model NMS per equivalence group."""
        candidates: list[Detection] = []
        groups: list[str] = []
        for detection in detections:
            if detection.confidence < self.min_confidence:
                continue
            normalised, group = self.normalise(detection)
            if normalised.box.area <= 0:
                continue
            candidates.append(normalised)
            groups.append(group)
        if not candidates:
            return []
        boxes = np.array(
            [[d.box.left, d.box.top, d.box.left + d.box.width, d.box.top + d.box.height]
             for d in candidates],
            dtype=np.float32,
        )
        scores = np.array([d.confidence for d in candidates], dtype=np.float32)
        group_ids = {g: i for i, g in enumerate(dict.fromkeys(groups))}
        class_ids = np.array([group_ids[g] for g in groups])
        keep = class_aware_nms(boxes, scores, class_ids, self.iou, len(candidates))
        # Nearly the same box under two unrelated labels (NanoDet's horse and cow on one animal)
        # is still one object: keep the more confident reading.
        agnostic = np.zeros(len(keep), dtype=np.int64)
        final = class_aware_nms(
            boxes[keep], scores[keep], agnostic, self.same_box_iou, self.max_instances
        )
        kept = [(candidates[keep[i]], groups[keep[i]]) for i in final]
        return self._drop_nested(kept)

    def _drop_nested(self, kept: list[tuple[Detection, str]]) -> list[Detection]:
        """Two boxes of one label and similar size where one mostly covers the other (one dog
        framed tightly and loosely: IoU just under the NMS threshold) are one object for a user
        choosing from a list; the more confident box stays."""
        result: list[tuple[Detection, str]] = []
        for detection, group in kept:  # already sorted by confidence
            nested = False
            for other, other_group in result:
                if other_group != group:
                    continue
                inter = detection.box.intersection(other.box)
                smaller = min(detection.box.area, other.box.area)
                larger = max(detection.box.area, other.box.area)
                # similar sizes only: a child standing in front of an adult stays its own object
                if (
                    smaller > 0
                    and inter / smaller >= self.nested_overlap
                    and smaller / larger >= 0.5
                ):
                    nested = True
                    break
            if not nested:
                result.append((detection, group))
        return [detection for detection, _ in result]

    def detect(self, image: Image.Image) -> list[Detection]:
        found: list[Detection] = []
        for detector in self.detectors:
            found.extend(detector.detect(image))
        return self.merge(found)

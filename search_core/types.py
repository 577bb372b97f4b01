"""Plain data shared by every backend.

The shapes deliberately mirror Amazon Rekognition's DetectLabels output (label, confidence in
percent, box as fractions of the image) so that the local detectors and Rekognition are
interchangeable behind :class:`search_core.interfaces.Detector`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


def _unit(value: float) -> float:
    """``value`` clamped to [0, 1]; NaN (which every comparison lets through) becomes 0."""
    return min(max(value, 0.0), 1.0) if value == value else 0.0


@dataclass(frozen=True)
class Box:
    """A box as fractions of the (EXIF-oriented) image's width and height, like Rekognition's
    ``BoundingBox``. Values may arrive outside [0, 1]; call :meth:`clamped` before use."""

    left: float
    top: float
    width: float
    height: float

    def clamped(self) -> Box:
        """Inside the image; a NaN coordinate (a crafted request) counts as 0, so the box is
        empty and refused as too small instead of crashing the pixel conversion."""
        left = _unit(self.left)
        top = _unit(self.top)
        right = _unit(self.left + self.width)
        bottom = _unit(self.top + self.height)
        return Box(left, top, max(right - left, 0.0), max(bottom - top, 0.0))

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    def intersection(self, other: Box) -> float:
        """Area covered by both boxes (0 when they do not overlap)."""
        width = min(self.left + self.width, other.left + other.width) - max(self.left, other.left)
        height = min(self.top + self.height, other.top + other.height) - max(self.top, other.top)
        return max(width, 0.0) * max(height, 0.0)

    def iou(self, other: Box) -> float:
        inter = self.intersection(other)
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0

    def to_pixels(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) in pixels of an image of the given size, clamped to it."""
        box = self.clamped()
        x0 = round(box.left * width)
        y0 = round(box.top * height)
        x1 = round((box.left + box.width) * width)
        y1 = round((box.top + box.height) * height)
        return x0, y0, max(x1, x0), max(y1, y0)


@dataclass(frozen=True)
class Detection:
    """One object instance. ``confidence`` is in percent (0-100) as Rekognition reports it."""

    label: str
    confidence: float
    box: Box
    parents: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    model: str = ""


@dataclass(frozen=True)
class ItemMeta:
    """What the index keeps beside each vector. ``sha256`` is of the source file's bytes and is
    the identity used for de-duplication in every backend (AOSS forbids custom document ids)."""

    uri: str
    sha256: str
    label: str = ""
    width: int = 0
    height: int = 0
    size_bytes: int = 0
    model: str = ""
    dimension: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ItemMeta:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


@dataclass(frozen=True)
class SearchHit:
    """One result. ``score`` is cosine similarity in [-1, 1] whatever the engine's own scale."""

    uri: str
    score: float
    item: ItemMeta
    #: near-duplicates folded into this hit (search_core.duplicates), best first
    similar: tuple[SearchHit, ...] = ()


@dataclass(frozen=True)
class SourceEntry:
    """One candidate file of an :class:`~search_core.interfaces.ImageSource`; cheap to list."""

    uri: str
    size_bytes: int = 0
    version: str = ""  # mtime_ns for files, ETag for S3: lets a re-run skip unchanged files

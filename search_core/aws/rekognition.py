"""Amazon Rekognition DetectLabels as a :class:`~search_core.interfaces.Detector`.

Why it looks like this:
- The image sent is the already EXIF-oriented RGB image, re-encoded as JPEG. Sending the raw
  phone file would let Rekognition answer in the sensor frame while we crop the rotated one
  (the sample's "crops wrong on phone photos" bug); RGBA/palette PNGs are flattened by the
  encoder instead of failing.
- ``Image.Bytes`` is limited to 5 MB and each side must be at least 80 px, so tiny crops are
  upscaled and large photos downscaled. Boxes are fractions, so resizing does not move them.
- Only labels with ``Instances`` have boxes; each instance is one selectable object.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from search_core.aws.clients import aws_errors
from search_core.aws.clients import client as make_client
from search_core.config import Settings
from search_core.images import encode_image
from search_core.types import Box, Detection

#: DetectLabels limits for Image.Bytes (documented): 5 MB, each side >= 80 px.
MAX_IMAGE_BYTES = 5 * 1024 * 1024
MIN_SIDE = 80
#: Rekognition accepts larger images, but detail beyond this adds bytes, not boxes.
MAX_SIDE = 1920
MODEL_NAME = "rekognition"


class RekognitionDetector:
    """``RekognitionDetector(settings, client=None)``; ``client`` lets tests pass a stubbed one."""

    name = MODEL_NAME

    def __init__(self, settings: Settings, *, client: Any | None = None) -> None:
        self._settings = settings
        self._client = client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = make_client("rekognition", self._settings)
        return self._client

    def request_bytes(self, image: Image.Image) -> bytes:
        """The JPEG actually sent (exposed for the bytes-per-image benchmark)."""
        return encode_image(
            image,
            fmt="JPEG",
            max_bytes=MAX_IMAGE_BYTES,
            max_side=min(MAX_SIDE, self._settings.max_side),
            min_side=MIN_SIDE,
        )

    def detect(self, image: Image.Image) -> list[Detection]:
        payload = self.request_bytes(image)
        with aws_errors(service="Rekognition", action="DetectLabels", settings=self._settings):
            response = self.client.detect_labels(
                Image={"Bytes": payload},
                MaxLabels=int(self._settings.rekognition_max_labels),
                MinConfidence=float(self._settings.rekognition_min_confidence),
            )
        return parse_labels(response.get("Labels", []), self._settings.rekognition_min_confidence)


def parse_labels(labels: list[dict[str, Any]], min_confidence: float = 0.0) -> list[Detection]:
    """One Detection per label instance, boxes clamped, sorted by confidence (highest first)."""
    detections: list[Detection] = []
    for label in labels:
        name = str(label.get("Name", "")).strip()
        parents = tuple(str(p.get("Name", "")) for p in label.get("Parents", []) if p.get("Name"))
        categories = tuple(
            str(c.get("Name", "")) for c in label.get("Categories", []) if c.get("Name")
        )
        for instance in label.get("Instances", []) or []:
            raw = instance.get("BoundingBox") or {}
            box = Box(
                float(raw.get("Left", 0.0)),
                float(raw.get("Top", 0.0)),
                float(raw.get("Width", 0.0)),
                float(raw.get("Height", 0.0)),
            ).clamped()
            confidence = float(instance.get("Confidence", label.get("Confidence", 0.0)))
            if box.area <= 0.0 or confidence < min_confidence or not name:
                continue
            detections.append(
                Detection(
                    label=name,
                    confidence=confidence,
                    box=box,
                    parents=parents,
                    categories=categories,
                    model=MODEL_NAME,
                )
            )
    detections.sort(key=lambda d: d.confidence, reverse=True)
    return detections

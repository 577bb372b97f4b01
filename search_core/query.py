"""A query image and which part of it to search: the analysed image (decoded, oriented,
detected, optionally labelled by the catalogue), the ``auto`` / ``whole`` / object-number
choice, and the limits an upload must keep. Pure data and rules, no models, so the UI, the CLI
and the REST API share one meaning of "object 2" without a pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from search_core.adaptation import CatalogueLabel
from search_core.errors import ImageTooLargeError, SearchError
from search_core.types import Detection

WHOLE = "whole"
AUTO = "auto"
#: detections used for the automatic choice must be this sure and this big
AUTO_MIN_CONFIDENCE = 50.0
AUTO_MIN_AREA = 0.04
#: at most this many detections compete with the whole image for ``auto`` (each costs one
#: embedding, ~10-20 ms)
AUTO_MAX_OBJECTS = 3
#: an object replaces the whole image only when its best catalogue match scores this much higher
#: (chosen on GroceryStore train/ queries against the iconic catalogue: 0, 0.02, 0.05, 0.1 gave
#: Recall@1 0.295, 0.298, 0.309, 0.305, the whole image alone 0.302)
AUTO_OBJECT_MARGIN = 0.05
#: at most this many detections get a catalogue label (one embedding each)
LABEL_MAX_OBJECTS = 10
MAX_TEXT_QUERY = 1000


@dataclass(frozen=True)
class AnalyzedImage:
    sha256: str
    image: Image.Image
    detections: tuple[Detection, ...]
    #: per detection, the catalogue's best match (see SearchPipeline.label_objects); empty
    #: until asked for, None for an object that could not be embedded
    catalogue: tuple[CatalogueLabel | None, ...] = ()

    def box_caption(self, number: int) -> str:
        """What the box of object ``number`` shows: the catalogue's label when it is a close
        match ("Kiwi 46 %"), else "" (the detector's label is drawn)."""
        match = self.catalogue[number] if number < len(self.catalogue) else None
        if match is None or not match.close or not match.label:
            return ""
        return f"{match.label} {max(match.score, 0.0) * 100:.0f} %"

    def choice_label(self, number: int) -> str:
        """ "Book 2 — 80 %", and once labelled "Book 2 — 80 % · Kiwi · 46 %" or "... · no close
        match in this catalogue": the generic detector label alone is often wrong for products
        (a milk carton is no "Book")."""
        detection = self.detections[number]
        text = f"{detection.label} {number + 1} — {detection.confidence:.0f} %"
        match = self.catalogue[number] if number < len(self.catalogue) else None
        extra = match.text() if match is not None else ""
        return f"{text} · {extra}" if extra else text


#: never preselected: in photos of products people hold or stand beside, the person is the
#: largest confident detection but almost never what a catalogue search is for (measured on
#: GroceryStore val: preselecting "Person" for 20 % of queries cost 3 points of Recall@1).
#: A user can still pick them from the dropdown.
AUTO_SKIP_LABELS = frozenset({"Person"})


def auto_candidates(detections: tuple[Detection, ...]) -> list[int]:
    """Confident, big enough detections, most prominent (confidence x sqrt(area)) first."""
    candidates = [
        (d.confidence * d.box.area**0.5, number)
        for number, d in enumerate(detections)
        if d.confidence >= AUTO_MIN_CONFIDENCE
        and d.box.area >= AUTO_MIN_AREA
        and d.label not in AUTO_SKIP_LABELS
    ]
    return [number for _, number in sorted(candidates, reverse=True)]


def auto_choice(detections: tuple[Detection, ...]) -> int | None:
    """The most prominent confident detection, or None for the whole image: the detector-only
    guess, used when no catalogue is there to ask (see SearchPipeline.auto_object)."""
    candidates = auto_candidates(detections)
    return candidates[0] if candidates else None


#: an object number has at most this many digits (more is no object, and int() of thousands of
#: digits is refused by Python itself)
MAX_OBJECT_DIGITS = 6


def is_object_number(text: str) -> bool:
    """A detection number as clients send it: ASCII digits only ("²" and "①" are digits to
    ``str.isdigit`` but not to ``int``) and short (the text may come from a crafted request)."""
    return text.isascii() and text.isdigit() and len(text) <= MAX_OBJECT_DIGITS


def parse_object(choice: str | int | None) -> str | int:
    """``auto`` | ``whole`` | 0-based object number, from the CLI's 1-based ``N``."""
    if choice is None or choice == "" or choice == AUTO:
        return AUTO
    if choice == WHOLE:
        return WHOLE
    if isinstance(choice, int):
        return choice
    try:
        number = int(choice)
    except ValueError as exc:
        raise SearchError(
            f"--object must be auto, whole or an object number, got {choice!r}"
        ) from exc
    if number < 1:
        raise SearchError("object numbers start at 1")
    return number - 1


def check_upload_size(size: int, limit: int) -> None:
    """ImageError for uploads over ``limit`` bytes. MB here are MiB, as SEARCH_MAX_UPLOAD_MB
    means them, so "60.0 MB; the limit is 50 MB" adds up for the user."""
    if size > limit:
        raise ImageTooLargeError(
            f"the upload is too large ({size / 2**20:.1f} MB); the limit is "
            f"{limit / 2**20:g} MB (SEARCH_MAX_UPLOAD_MB)"
        )

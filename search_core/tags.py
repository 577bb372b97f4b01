"""Automatic tags and categories of catalogue items, and keyword matching against them.

Why tags: an image-only embedder (EfficientNet-Lite, the offline default) cannot take a text
query, yet a shop still wants "only shoes" or "show me bananas". Two labellers are already
loaded and cost almost nothing extra at index time: the detector (its labels for the objects
found in the image) and, for EfficientNet, the ImageNet classifier head that comes out of the
same forward pass as the vector (:meth:`EfficientNetEmbedder.forward`). Their labels are stored
in ``ItemMeta.extra["tags"]`` and serve as filters and as a keyword search.

The category is the item's top folder below the indexed source (``train/Fruit/Apple/x.jpg``
indexed from ``train`` is ``Fruit``): catalogues are usually laid out by department.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from search_core.interfaces import Detector, Embedder, KeywordEmbedder
from search_core.types import ItemMeta

#: detector labels below this confidence (percent) are too often wrong to describe an item
MIN_DETECTOR_CONFIDENCE = 45.0
#: ImageNet labels kept per image and the probability each needs (softmax over 1000 classes:
#: 0.10 keeps the one or two plausible labels of a product photo, not the long tail)
KEYWORD_TOP_K = 3
MIN_KEYWORD_PROBABILITY = 0.10

#: Words a shopper types that no label contains: detector labels are generic ("Footwear"),
#: ImageNet names specific ("running shoe"). Keys and values are lower case.
ALIASES: dict[str, tuple[str, ...]] = {
    "footwear": ("shoe", "shoes", "boot", "boots", "sandal", "sandals", "sneaker", "sneakers"),
    "high heels": ("shoe", "shoes", "heels"),
    "boot": ("shoe", "shoes"),
    "mobile phone": ("phone", "smartphone"),
    "television": ("tv",),
    "bottle": ("drink",),
}


def category_of(uri: str, source_uri: str) -> str:
    """The top folder of ``uri`` below ``source_uri``; "" for files directly in the source."""
    root = source_uri.replace("\\", "/").rstrip("/")
    path = uri.replace("\\", "/")
    if root and path.startswith(root + "/"):
        path = path[len(root) + 1 :]
    elif "://" in path:  # s3://bucket/key from another source: drop the bucket
        path = path.split("://", 1)[1].split("/", 1)[-1]
    parts = PurePosixPath(path).parts
    return parts[0] if len(parts) > 1 else ""


def item_category(item: ItemMeta) -> str:
    """The stored category, or one derived from the URI for items indexed before tags existed."""
    stored = item.extra.get("category")
    if isinstance(stored, str):
        return stored
    return category_of(item.uri, str(item.extra.get("source", "")))


def item_tags(item: ItemMeta) -> list[str]:
    tags = item.extra.get("tags")
    return [str(t) for t in tags] if isinstance(tags, list) else []


def _unique(values: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for value in values:
        if value and value not in seen:
            seen[value] = None
    return list(seen)


class Tagger:
    """Detector labels and ImageNet keywords of catalogue images, for the indexer."""

    def __init__(self, detector: Detector | None, embedder: Embedder) -> None:
        self.detector = detector
        self.embedder = embedder

    @property
    def has_keywords(self) -> bool:
        return isinstance(self.embedder, KeywordEmbedder)

    def image_tags(self, image: Image.Image) -> list[str]:
        """Labels of the confident detections (runs in the indexer's worker threads: ONNX
        Runtime sessions may be shared between threads). A failing detector costs the tags of
        one image, never the image itself."""
        if self.detector is None:
            return []
        try:
            detections = self.detector.detect(image)
        except Exception:  # tags are a bonus; the item is indexed anyway
            return []
        return _unique(d.label for d in detections if d.confidence >= MIN_DETECTOR_CONFIDENCE)

    def describe(self, uri: str, source_uri: str, image: Image.Image) -> dict[str, Any]:
        """What the indexer stores in ``extra`` besides version and source."""
        return {"category": category_of(uri, source_uri), "tags": self.image_tags(image)}

    def keyword_tags(self, logits: np.ndarray) -> list[list[str]]:
        """Top ImageNet labels per row of classifier logits ([] per row without the head)."""
        if not isinstance(self.embedder, KeywordEmbedder) or logits is None or len(logits) == 0:
            return [[] for _ in range(0 if logits is None else len(logits))]
        return [
            [name for name, _ in row]
            for row in self.embedder.keywords(logits, KEYWORD_TOP_K, MIN_KEYWORD_PROBABILITY)
        ]

    @staticmethod
    def merge(metas: Sequence[ItemMeta | None], extra_tags: Sequence[list[str]]) -> None:
        """Adds ``extra_tags`` to each item's ``extra["tags"]`` (in place: ItemMeta is frozen
        but its ``extra`` dict is the one that will be stored)."""
        for meta, tags in zip(metas, extra_tags, strict=False):
            if meta is not None and tags:
                meta.extra["tags"] = _unique([*item_tags(meta), *tags])


#: words a shopper adds that no tag carries
STOPWORDS = frozenset({"a", "an", "the", "of", "with", "in", "for", "and", "some"})


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[^a-z0-9]+", text.lower()) if w and w not in STOPWORDS]


def _singular(word: str) -> str:
    if len(word) > 3 and word.endswith("es") and word[-3] in "sxz":
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def matching_tags(keyword: str, vocabulary: Iterable[str]) -> list[str]:
    """Tags of ``vocabulary`` a shopper's keyword means: every word of the keyword must be a
    word of the tag (singular or plural) or of the tag's aliases: "shoes" matches "running
    shoe" and "Footwear" (through :data:`ALIASES`)."""
    wanted = [_singular(w) for w in _words(keyword)]
    if not wanted:
        return []
    found = []
    for tag in vocabulary:
        words = {_singular(w) for w in _words(tag)}
        for alias in ALIASES.get(tag.lower(), ()):
            words.update(_singular(w) for w in _words(alias))
        if all(w in words for w in wanted):
            found.append(tag)
    return found


def facets(items: Iterable[ItemMeta], limit: int = 200) -> dict[str, list[str]]:
    """The categories and tags present in the index, most frequent first (filter choices)."""
    categories: dict[str, int] = {}
    tags: dict[str, int] = {}
    for item in items:
        category = item_category(item)
        if category:
            categories[category] = categories.get(category, 0) + 1
        for tag in item_tags(item):
            tags[tag] = tags.get(tag, 0) + 1

    def ranked(counts: dict[str, int]) -> list[str]:
        return [name for name, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))][:limit]

    return {"category": sorted(ranked(categories)), "tags": ranked(tags)}


def product_name(label: str, uri: str) -> str:
    """A person's name for a catalogue item: its class folder, else its file name."""
    name = label or PurePosixPath(uri.replace("\\", "/")).stem
    return name.replace("-", " ").replace("_", " ").strip() or uri


def short_source(uri: str, parts: int = 2) -> str:
    """The last folder and the file name: enough to recognise a file, short enough to read."""
    path = PurePosixPath(uri.replace("\\", "/"))
    tail = path.parts[-parts:]
    return ("…/" if len(path.parts) > parts else "") + "/".join(tail)

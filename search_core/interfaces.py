"""The four narrow seams of the product. Every backend (local ONNX, CLIP, AWS) implements these
and nothing else; :mod:`search_core.factory` picks implementations from configuration."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from search_core.types import Detection, ItemMeta, SearchHit, SourceEntry


@runtime_checkable
class Detector(Protocol):
    """Finds object instances in an RGB image that is already EXIF-oriented."""

    name: str

    def detect(self, image: Image.Image) -> list[Detection]:
        """Instances sorted by confidence, highest first; boxes are fractions, clamped."""
        ...


@runtime_checkable
class Embedder(Protocol):
    """Turns images (and, where supported, text) into L2-normalised float32 vectors."""

    model_id: str
    dimension: int
    supports_text: bool

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Shape (len(images), dimension), float32, each row of unit length."""
        ...

    def embed_query(self, image: Image.Image | None = None, text: str | None = None) -> np.ndarray:
        """One query vector (dimension,) from an image, a text, or both (image + text queries
        such as "this, but in red"). Raises NotSupportedError for text on image-only models."""
        ...


@runtime_checkable
class VectorIndex(Protocol):
    """Stores vectors with :class:`ItemMeta`; de-duplicates by ``sha256``."""

    name: str

    def add(self, vectors: np.ndarray, items: Sequence[ItemMeta]) -> int:
        """Adds rows whose sha256 is not yet present; returns how many were added."""
        ...

    def search(
        self, vector: np.ndarray, k: int, filters: dict[str, Any] | None = None
    ) -> list[SearchHit]:
        """Top ``k`` by cosine similarity; ``filters`` maps metadata field -> required value."""
        ...

    def known_hashes(self, sha256s: Iterable[str]) -> set[str]:
        """Which of these hashes are already indexed."""
        ...

    def items(self) -> Iterator[ItemMeta]:
        """Every stored item (for pruning, stats and evaluation)."""
        ...

    def delete(self, sha256s: Iterable[str]) -> int:
        """Removes items by hash; returns how many were removed."""
        ...

    def reset(self) -> None:
        """Removes everything (the index stays usable)."""
        ...

    def count(self) -> int: ...

    def stats(self) -> dict[str, Any]:
        """At least ``count``, ``backend`` and ``dimension``."""
        ...


@runtime_checkable
class ImageSource(Protocol):
    """A corpus to index: a folder, an S3 prefix, ..."""

    uri: str

    def list(self) -> Iterator[SourceEntry]:
        """Candidate entries, cheaply (no content read), in a stable order."""
        ...

    def read(self, entry: SourceEntry) -> bytes:
        """The entry's bytes; raises SourceError/OSError for that entry only."""
        ...

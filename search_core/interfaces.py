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
    """Stores vectors with :class:`ItemMeta`: one content (vector) per ``sha256``, any number of
    names (``uri``) per content, one content per name."""

    name: str

    def add(self, vectors: np.ndarray, items: Sequence[ItemMeta]) -> int:
        """Stores contents not yet present and points each item's name at its content (a name
        that had other content is moved); returns how many contents were new."""
        ...

    def link(self, items: Sequence[ItemMeta]) -> list[ItemMeta]:
        """Points names at contents already stored, without vectors; returns the items whose
        content is not stored (the caller embeds them and calls ``add``)."""
        ...

    def remove(self, uris: Iterable[str]) -> int:
        """Removes names (a content goes with its last name); returns how many names went."""
        ...

    def finalize(self) -> None:
        """End of an indexing run: make derived structures current (the local search graph);
        a no-op where there is nothing to do. Raises BackendError when it cannot be saved."""
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
        """Every stored name with its content's metadata (for pruning, stats, evaluation)."""
        ...

    def delete(self, sha256s: Iterable[str]) -> int:
        """Removes contents and all their names; returns how many contents were removed."""
        ...

    def reset(self) -> None:
        """Removes everything (the index stays usable)."""
        ...

    def count(self) -> int:
        """Names (files) in the index."""
        ...

    def stats(self) -> dict[str, Any]:
        """At least ``count``, ``backend`` and ``dimension``."""
        ...

    def holds(self, uri: str) -> bool:
        """Whether ``uri`` is a stored name: previews read only what the index holds, so a URI
        from a client (a thumbnail URL) can never name another server file."""
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

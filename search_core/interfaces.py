"""The narrow seams of the product, and the optional capabilities a backend may add.

Every backend (local ONNX, CLIP, AWS) implements one of the four base Protocols
(:class:`Detector`, :class:`Embedder`, :class:`VectorIndex`, :class:`ImageSource`);
:mod:`search_core.factory` picks implementations from configuration. A fast path or an extra
behaviour that only some backends have is declared below as a small optional Protocol and found
with ``isinstance``, never with ``getattr`` on a method name: a misspelt hook then fails the
``isinstance`` test in ``tests/test_interfaces.py`` instead of silently turning the fast path off.
"""

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

    # read-only: a class attribute or a property (CLIP learns its dimension from the model)
    @property
    def model_id(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    @property
    def supports_text(self) -> bool: ...

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


# --------------------------------------------------------------------------- optional capabilities


@runtime_checkable
class Loadable(Protocol):
    """A model that loads lazily on first use. ``load()`` loads it now (server warm-up, the
    CLI's early check for a missing model file); ``loaded`` tells readiness probes whether it is
    in memory."""

    @property
    def loaded(self) -> bool: ...

    def load(self) -> None: ...


@runtime_checkable
class PreprocessingEmbedder(Protocol):
    """An embedder whose preprocessing can run apart from inference: the indexer decodes and
    preprocesses in worker threads while the main thread runs ``forward`` on whole batches."""

    def preprocess(self, images: Sequence[Image.Image]) -> np.ndarray:
        """A model-ready batch, one row per image."""
        ...

    def forward(self, batch: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
        """Unit-length vectors for a preprocessed batch (first element when a tuple)."""
        ...


@runtime_checkable
class PartialBatchEmbedder(Protocol):
    """An embedder that can lose single images of a batch (remote calls): it returns a vector
    or the error per image so one failure does not discard the rest of the batch."""

    def embed_images_partial(
        self, images: Sequence[Image.Image]
    ) -> Sequence[np.ndarray | Exception]: ...


@runtime_checkable
class PrefersBatchSize(Protocol):
    """An embedder that wants bigger indexing batches than ``SEARCH_BATCH_SIZE`` (a remote
    embedder waits for the slowest call of each batch, so more calls per batch amortise it)."""

    preferred_batch_size: int


@runtime_checkable
class CalibratedNearDuplicates(Protocol):
    """An embedder whose near-duplicate cosine was measured (``bench/near_duplicates.py``):
    edited copies of one photo fold into one result, distinct products do not. The value
    belongs to the model, not the catalogue: a bigger network spreads copies less."""

    near_duplicate_threshold: float


@runtime_checkable
class EventuallyConsistent(Protocol):
    """An index whose new documents may become searchable only some time after ``add``
    (OpenSearch Serverless: up to a minute); ``serverless`` is True when that applies."""

    serverless: bool


@runtime_checkable
class ListsVectors(Protocol):
    """An index that can hand back every stored vector with its item, in one call: the
    catalogue adaptation learns its projection from them (see :mod:`search_core.adaptation`)."""

    def vectors(self) -> tuple[np.ndarray, list[ItemMeta]]: ...


@runtime_checkable
class LooksUpVectors(Protocol):
    """An index that returns one stored vector by content id: "more like this", keyword search
    over stored vectors and near-duplicate folding need it (both indexes have it)."""

    def vector_of(self, sha256: str) -> np.ndarray | None: ...


@runtime_checkable
class ExpectsLookups(Protocol):
    """An index whose ``vector_of`` is a remote call: told which contents are about to be
    looked up one by one (a result list, before near-duplicate folding), it fetches their
    vectors in one request instead of one per result."""

    def expect_lookups(self, sha256s: Sequence[str]) -> None: ...


@runtime_checkable
class SelectsVectors(Protocol):
    """An index that returns the stored vectors of the items passing a filter in one query
    (OpenSearch: a terms query on ``tags``), at most ``limit``: a keyword search ranks the
    tagged items by their mean vector without listing the catalogue and asking item by item."""

    def vectors_where(
        self, filters: dict[str, Any], limit: int = ...
    ) -> tuple[np.ndarray, list[ItemMeta]]: ...


@runtime_checkable
class LooksUpItems(Protocol):
    """An index that returns one item by content id without listing them all."""

    def item_of(self, sha256: str) -> ItemMeta | None: ...


@runtime_checkable
class KeywordEmbedder(Protocol):
    """An embedder whose forward pass also yields classifier logits, named by ``keywords``
    (EfficientNet's ImageNet head): free tags at index time."""

    def keywords(
        self, logits: np.ndarray, top_k: int = 5, min_probability: float = 0.05
    ) -> list[list[tuple[str, float]]]: ...

"""The query path: analyse an image once, then search any of its objects.

Analysis (decode + orient + detect) is cached per image hash inside the pipeline, so a user who
switches between detected objects only pays for crop + embed + search.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from search_core.adaptation import CatalogueAdapter
from search_core.config import Settings
from search_core.crop import crop
from search_core.duplicates import collapse_near_duplicates, near_duplicate_pairs
from search_core.errors import ItemNotFoundError, SearchError
from search_core.filters import matches
from search_core.images import load_image, sha256_hex
from search_core.indexing import Indexer, IndexReport, ProgressCallback, parse_shard
from search_core.interfaces import (
    CalibratedNearDuplicates,
    Detector,
    Embedder,
    ExpectsLookups,
    ListsVectors,
    Loadable,
    LooksUpItems,
    LooksUpVectors,
    PrefersBatchSize,
    SelectsVectors,
    VectorIndex,
)
from search_core.jobs import JobManager
from search_core.probe import IndexProbe
from search_core.query import (
    AUTO,
    AUTO_MAX_OBJECTS,
    AUTO_MIN_AREA,
    AUTO_MIN_CONFIDENCE,
    AUTO_OBJECT_MARGIN,
    AUTO_SKIP_LABELS,
    LABEL_MAX_OBJECTS,
    MAX_TEXT_QUERY,
    WHOLE,
    AnalyzedImage,
    auto_candidates,
    auto_choice,
    check_upload_size,
    parse_object,
)
from search_core.ranking import OVERFETCH, PER_LABEL_FETCH, cap_per_label
from search_core.relevance import CatalogueRelevance
from search_core.sources import (
    PREVIEW_NOT_INDEXED,
    PREVIEW_OUTSIDE_ROOTS,
    open_source,
    preview_policy,
    read_uri,
)
from search_core.tags import Tagger, facets, matching_tags
from search_core.types import Box, ItemMeta, SearchHit

#: the names callers import from here, wherever they now live
__all__ = [
    "AUTO",
    "AUTO_MAX_OBJECTS",
    "AUTO_MIN_AREA",
    "AUTO_MIN_CONFIDENCE",
    "AUTO_OBJECT_MARGIN",
    "AUTO_SKIP_LABELS",
    "CACHE_MAX_PIXELS",
    "LABEL_MAX_OBJECTS",
    "MAX_TEXT_QUERY",
    "OVERFETCH",
    "PER_LABEL_FETCH",
    "PREVIEW_NOT_INDEXED",
    "PREVIEW_OUTSIDE_ROOTS",
    "WHOLE",
    "AnalyzedImage",
    "IndexProbe",
    "SearchPipeline",
    "auto_candidates",
    "auto_choice",
    "cap_per_label",
    "check_upload_size",
    "parse_object",
]

log = logging.getLogger(__name__)

#: in the data dir while the first-start indexing of the sample catalogue has not completed
SAMPLE_PENDING = "sample-catalogue.pending"

#: SEARCH_NEAR_DUPLICATE=auto for an embedder without a measured value (CLIP, Titan: their
#: weights or service are out of reach here): the default embedder's
UNCALIBRATED_NEAR_DUPLICATE = 0.92

#: Decoded query images kept for object switching, in pixels over all entries (3 bytes each):
#: 32 phone photos at 2048 px would otherwise pin ~300 MB; this caps the cache near 100 MB.
CACHE_MAX_PIXELS = 32_000_000


def _pixels(analyzed: AnalyzedImage) -> int:
    return analyzed.image.width * analyzed.image.height


class SearchPipeline(CatalogueRelevance):
    """Detector + embedder + index, and the background indexing jobs that feed the index.

    The facade the app, API and CLI use; the query rules live in :mod:`search_core.query`,
    result ranking in :mod:`search_core.ranking`, the adaptation / auto / catalogue labels in
    :mod:`search_core.relevance` (mixed in) and the remote index probe in
    :mod:`search_core.probe`."""

    def __init__(
        self,
        settings: Settings,
        *,
        detector: Detector | None,
        embedder: Embedder,
        index: VectorIndex,
        cache_size: int = 32,
    ) -> None:
        self.settings = settings
        self.detector = detector
        self.embedder = embedder
        self.index = index
        self.jobs = JobManager(self._run_job)
        self._probe = IndexProbe(index)
        self._cache: OrderedDict[str, AnalyzedImage] = OrderedDict()
        self._cache_size = cache_size
        self._cache_lock = threading.Lock()
        self.adapter = CatalogueAdapter(
            index, settings.data_dir, embedder.model_id, mode=settings.adapt
        )
        # view vectors per (image hash, region): auto, labels and the search share embeddings
        self._views: OrderedDict[tuple[str, Box | None], np.ndarray] = OrderedDict()
        self._auto: OrderedDict[str, int | None] = OrderedDict()
        self._facets: tuple[int, dict[str, list[str]]] | None = None  # (count, facets)

    # -- analysis ------------------------------------------------------------------------------

    def analyze(self, data: bytes) -> AnalyzedImage:
        """Decoded, oriented image and its detections; cached by content hash."""
        check_upload_size(len(data), self.settings.max_upload_bytes)
        key = sha256_hex(data)
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        image = load_image(
            data, max_pixels=self.settings.max_pixels, max_side=self.settings.max_side
        )
        detections = tuple(self.detector.detect(image)) if self.detector else ()
        analyzed = AnalyzedImage(sha256=key, image=image, detections=detections)
        with self._cache_lock:
            self._cache[key] = analyzed
            while len(self._cache) > 1 and (
                len(self._cache) > self._cache_size
                or sum(_pixels(a) for a in self._cache.values()) > CACHE_MAX_PIXELS
            ):
                self._cache.popitem(last=False)
        return analyzed

    def region(self, analyzed: AnalyzedImage, choice: str | int | Box | None) -> Box | None:
        """The box to crop for a choice (auto / whole / object number / manual box)."""
        if isinstance(choice, Box):
            return choice
        parsed = parse_object(choice)
        if parsed == WHOLE:
            return None
        if parsed == AUTO:
            number = self.auto_object(analyzed)
            return None if number is None else analyzed.detections[number].box
        assert isinstance(parsed, int)
        if not 0 <= parsed < len(analyzed.detections):
            raise SearchError(
                f"object {parsed + 1} does not exist: {len(analyzed.detections)} object(s) "
                "were detected"
            )
        return analyzed.detections[parsed].box

    # -- search --------------------------------------------------------------------------------

    def check_text(self, text: str | None) -> str | None:
        """The stripped text query, or None; SearchError when it is too long. Cheap, so callers
        run it before the (slow) image analysis and fail fast with one clear message."""
        text = (text or "").strip() or None
        if text is not None and len(text) > MAX_TEXT_QUERY:
            raise SearchError(
                f"the text query is too long ({len(text):,} characters; at most {MAX_TEXT_QUERY:,})"
            )
        return text

    def query_vector(
        self, analyzed: AnalyzedImage | None, choice: str | int | Box | None, text: str | None
    ) -> np.ndarray:
        text = self.check_text(text)
        if analyzed is None and text is None:
            raise SearchError("give an image, a text, or both")
        if analyzed is not None and text is None:
            return self.view_vector(analyzed, self.region(analyzed, choice))
        image = None if analyzed is None else crop(analyzed.image, self.region(analyzed, choice))
        return self.embedder.embed_query(image=image, text=text)

    def search_vector(
        self,
        vector: np.ndarray,
        k: int = 10,
        filters: dict[str, Any] | None = None,
        *,
        plain: bool = False,
    ) -> list[SearchHit]:
        """Top ``k`` distinct images: over-fetches, then drops repeated content or URIs (the
        same photo stored twice, or a re-indexed file whose old version is still visible).
        ``plain`` skips the catalogue adaptation (text queries: it is fitted on images)."""
        k = max(1, min(int(k), 100))
        hits = self.candidates(vector, k * OVERFETCH + 5, filters, plain=plain)
        seen: set[str] = set()
        unique: list[SearchHit] = []
        for hit in sorted(hits, key=lambda h: -h.score):
            keys = {hit.item.sha256, hit.uri}
            if keys & seen:
                continue
            seen |= keys
            unique.append(hit)
        return self.collapse(unique)[:k]

    @property
    def near_duplicate_threshold(self) -> float:
        """SEARCH_NEAR_DUPLICATE, or with ``auto`` the embedder's calibrated cosine (the
        default embedder's value for one not calibrated here: CLIP, Titan)."""
        if self.settings.near_duplicate is not None:
            return self.settings.near_duplicate
        if isinstance(self.embedder, CalibratedNearDuplicates):
            return float(self.embedder.near_duplicate_threshold)
        return UNCALIBRATED_NEAR_DUPLICATE

    def collapse(self, hits: list[SearchHit]) -> list[SearchHit]:
        """Near-duplicates folded into the higher result (needs the index's stored vectors:
        both indexes return them; elsewhere results stay as they are)."""
        if isinstance(self.index, ExpectsLookups):  # one request for the list (OpenSearch)
            self.index.expect_lookups([hit.item.sha256 for hit in hits])
        return collapse_near_duplicates(
            hits,
            self.index.vector_of if isinstance(self.index, LooksUpVectors) else None,
            self.near_duplicate_threshold,
        )

    def item(self, sha256: str) -> ItemMeta | None:
        """One catalogue item by its id (content hash)."""
        if isinstance(self.index, LooksUpItems):
            return self.index.item_of(sha256)
        return next((i for i in self.index.items() if i.sha256 == sha256), None)

    def search_by_item(
        self, sha256: str, k: int = 10, filters: dict[str, Any] | None = None
    ) -> list[SearchHit]:
        """More like this: the stored vector of a catalogue item is the query (no image is
        read or embedded again). The item itself is left out; its near-duplicates stay, as
        one result."""
        if not isinstance(self.index, LooksUpVectors):
            raise SearchError(f"the {self.index.name} index cannot return stored vectors")
        vector = self.index.vector_of(sha256)
        if vector is None:
            raise ItemNotFoundError(f"no catalogue item has the id {sha256[:80]!r}")
        hits: list[SearchHit] = []
        for hit in self.search_vector(vector, k + 1, filters):
            if hit.item.sha256 != sha256:
                hits.append(hit)
            elif hit.similar:  # the item's own copies stay visible, as one result
                hits.append(dataclasses.replace(hit.similar[0], similar=hit.similar[1:]))
        return hits[:k]

    def near_duplicate_pairs(self, max_items: int = 20_000) -> list[tuple[str, str, float]]:
        """(uri, uri, cosine) of distinct contents at or above the near-duplicate threshold,
        most similar first (byte-identical copies are one content, not a pair); [] when the
        index keeps no vectors or holds more than ``max_items`` (all pairs is O(N²))."""
        threshold = self.near_duplicate_threshold
        if not isinstance(self.index, ListsVectors):
            return []
        if threshold <= 0 or self.index.count() > max_items:
            return []
        matrix, names = self.index.vectors()
        first: dict[str, int] = {}
        for row, item in enumerate(names):
            first.setdefault(item.sha256, row)
        rows = sorted(first.values())
        if len(rows) < 2:
            return []
        pairs = near_duplicate_pairs(matrix[rows], threshold)
        pairs.sort(key=lambda p: -p[2])
        return [(names[rows[i]].uri, names[rows[j]].uri, score) for i, j, score in pairs]

    def facets(self) -> dict[str, list[str]]:
        """Categories and tags of the catalogue (filter choices), cached per item count."""
        count = self.index.count()
        cached = self._facets
        if cached is None or cached[0] != count:
            cached = (count, facets(self.index.items()))
            self._facets = cached
        return cached[1]

    def keyword_filters(self, keyword: str) -> dict[str, Any]:
        """Text on an image-only embedder is a keyword over the automatic tags: "shoe" →
        items tagged Footwear or running shoe. SearchError when no tag matches."""
        known = self.facets()["tags"]
        tags = matching_tags(keyword, known)
        if not tags:
            hint = ", ".join(known[:12]) if known else "none yet (re-index with SEARCH_TAGS=true)"
            raise SearchError(
                f"no catalogue item is tagged “{keyword}”; tags in this catalogue: {hint}. "
                f"{self.embedder.model_id} cannot read free text: for that, set "
                "SEARCH_EMBEDDER=clip or titan"
            )
        return {"tags": tags}

    def search_keyword(
        self, keyword: str, k: int = 10, filters: dict[str, Any] | None = None
    ) -> list[SearchHit]:
        """Items tagged with ``keyword``, the most typical first (closest to the mean vector
        of all of them)."""
        wanted = {**(filters or {}), **self.keyword_filters(keyword)}
        if isinstance(self.index, SelectsVectors):  # one filtered query (OpenSearch)
            matrix, _ = self.index.vectors_where(wanted)
            return self._typical(list(matrix), k, wanted)
        if not isinstance(self.index, LooksUpVectors):
            raise SearchError(f"keyword search needs stored vectors ({self.index.name} index)")
        vector_of = self.index.vector_of
        vectors = [
            v
            for v in (vector_of(i.sha256) for i in self.index.items() if matches(i, wanted))
            if v is not None
        ]
        return self._typical(vectors, k, wanted)

    def _typical(
        self, vectors: list[np.ndarray], k: int, wanted: dict[str, Any]
    ) -> list[SearchHit]:
        if not vectors:
            return []
        centroid = np.mean(vectors, axis=0)
        return self.search_vector(centroid / max(float(np.linalg.norm(centroid)), 1e-12), k, wanted)

    def search(
        self,
        analyzed: AnalyzedImage | None,
        choice: str | int | Box | None = AUTO,
        *,
        k: int = 10,
        text: str | None = None,
        filters: dict[str, Any] | None = None,
    ) -> list[SearchHit]:
        text = self.check_text(text)
        if text is not None and not self.embedder.supports_text:
            if analyzed is None:
                return self.search_keyword(text, k, filters)
            filters = {**(filters or {}), **self.keyword_filters(text)}
            text = None  # the keyword narrows the image search to its tags
        vector = self.query_vector(analyzed, choice, text)
        return self.search_vector(vector, k, filters, plain=text is not None)

    # -- indexing ------------------------------------------------------------------------------

    def _tagger(self) -> Tagger | None:
        """SEARCH_TAGS: ``all`` runs the detector on every catalogue image (its labels are the
        tags a shopper types, "Footwear"), ``keywords`` only keeps the ImageNet labels that
        come free with EfficientNet's vector, ``off`` stores none."""
        mode = self.settings.tags
        if mode == "off":
            return None
        return Tagger(self.detector if mode == "all" else None, self.embedder)

    def indexer(self) -> Indexer:
        # Remote embedders ask for bigger batches than a local model needs (see TitanEmbedder).
        embedder = self.embedder
        preferred = embedder.preferred_batch_size if isinstance(embedder, PrefersBatchSize) else 0
        return Indexer(
            tagger=self._tagger(),
            embedder=self.embedder,
            index=self.index,
            batch_size=max(self.settings.batch_size, preferred),
            max_bytes=self.settings.max_upload_bytes,
            max_pixels=self.settings.max_pixels,
            max_side=self.settings.max_side,
        )

    def index_source(
        self,
        source_uri: str,
        *,
        prune: bool = False,
        shard: str | None = None,
        progress: ProgressCallback | None = None,
        stop: threading.Event | None = None,
    ) -> IndexReport:
        source = open_source(source_uri, self.settings)
        if source_uri != str(self.settings.sample_catalogue):
            # the user has moved on to a catalogue of their own: never add the rest of an
            # interrupted sample indexing into it at the next start
            self._sample_done()
        with self.adapter.ingesting():  # searches meanwhile are plain: they see every image
            report = self.indexer().run(
                source, prune=prune, shard=parse_shard(shard), progress=progress, stop=stop
            )
            self.adapt_after_ingest(report)
        return report

    def _run_job(
        self, source: str, prune: bool, stop: threading.Event, progress: ProgressCallback
    ) -> IndexReport:
        report = self.index_source(source, prune=prune, progress=progress, stop=stop)
        sample = self.settings.sample_catalogue
        if sample is not None and source == str(sample) and not (report.stopped or report.error):
            self._sample_done()
        return report

    def _sample_pending(self) -> Path:
        """Exists from the start of the first-start sample indexing until it completes."""
        return self.settings.data_dir / SAMPLE_PENDING

    def _sample_done(self) -> None:
        """No sample indexing to resume at the next start (never fails the caller)."""
        try:
            self._sample_pending().unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot remove %s: %s", self._sample_pending(), exc)

    def bootstrap_sample(self) -> bool:
        """Indexes the bundled sample catalogue in the background when the index is empty, so a
        newcomer's very first search returns results, and resumes it when that first indexing
        was interrupted (Ctrl-C, a stopped container): the index is then no longer empty, and
        would otherwise keep a third of the sample forever. True when a job was started."""
        sample = self.settings.sample_catalogue
        if sample is None or not sample.is_dir():
            return False
        pending = self._sample_pending()
        if self.index.count() > 0 and not pending.exists():
            return False
        if self.jobs.active() is not None:
            return False
        try:
            pending.parent.mkdir(parents=True, exist_ok=True)
            pending.touch()
        except OSError as exc:  # a read-only data dir: index anyway, only resuming is lost
            log.warning("cannot record the sample indexing in %s: %s", pending, exc)
        self.jobs.start(str(sample))
        return True

    def reset(self) -> int:
        """Removes every item and returns how many there were. Refused while an indexing job
        runs: it would keep writing into the emptied index."""
        if self.jobs.active() is not None:
            raise SearchError("Stop the running job first.")
        removed = self.index.count()
        self.index.reset()
        self._sample_done()  # an emptied index is the user's choice
        return removed

    def preview(self, uri: str, max_side: int = 384) -> Image.Image | None:
        """A small image of a result for the gallery; None if it may not be shown (see
        :meth:`preview_refusal`) or the file went away.

        ``uri`` may come from a client (a thumbnail URL), so it is read only when the index
        holds it and it lies under the allowed roots (local files: checked again on the file
        actually opened) or comes from an S3 bucket the index holds it from.
        """
        refusal = self.preview_refusal(uri)
        if refusal is not None:
            log.info("no preview for %r: %s", uri[:300], refusal)
            return None
        try:
            return load_image(
                read_uri(uri, self.settings), max_side=max_side, max_pixels=self.settings.max_pixels
            )
        except (SearchError, OSError) as exc:
            log.warning("no preview for %s: %s", uri, exc)
            return None

    def preview_refusal(self, uri: str) -> str | None:
        """Why the web app may not show this item's image (None: it may), worded for users.

        Cheap (one index lookup, no file opened). The CLI may index folders outside
        ``SEARCH_FOLDER_ROOTS`` (it is the owner's tool); their results are still found on the
        web, but shown without a preview (:data:`PREVIEW_OUTSIDE_ROOTS`).
        """
        if not isinstance(uri, str) or not uri or "\x00" in uri:
            return PREVIEW_NOT_INDEXED
        try:
            held = self.index.holds(uri)
        except SearchError as exc:
            log.warning("no preview for %r: index lookup failed: %s", uri[:300], exc)
            return "the index cannot be reached"
        if not held:
            return PREVIEW_NOT_INDEXED
        return preview_policy(uri, self.settings)

    # -- operations ----------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Loads every model now so the first user does not wait for it."""
        for part in (self.detector, self.embedder):
            if isinstance(part, Loadable):
                part.load()  # a merged detector loads each of its parts
        self.prepare_adaptation()  # load (or fit, when missing or stale) before the first user

    def stats(self) -> dict[str, Any]:
        stats = dict(self.index.stats())
        try:
            self.adapter.ensure()
        except Exception as exc:  # stats must report, not raise
            log.warning("adaptation state unknown: %s", exc)
        stats["adaptation"] = self.adapter.describe()
        stats.setdefault("dimension", self.embedder.dimension)
        stats["embedder"] = self.embedder.model_id
        stats["near_duplicate"] = self.near_duplicate_threshold
        stats["detector"] = self.detector.name if self.detector else "none"
        stats["supports_text"] = self.embedder.supports_text
        return stats

    def health(self) -> dict[str, Any]:
        """Readiness for /healthz: models loaded and, for the local index, the database
        answering. A remote index (OpenSearch) is reported as information only and never
        waited for: its state comes from a background probe (see :class:`IndexProbe`), so an
        AOSS slowdown or a data-policy 403 cannot mark every task unhealthy and cycle them."""
        model_loaded = self.embedder.loaded if isinstance(self.embedder, Loadable) else True
        backend = self.index.name
        result: dict[str, Any] = {
            "model_loaded": model_loaded,
            "embedder": self.embedder.model_id,
            "detector": self.detector.name if self.detector else "none",
            "backend": backend,
        }
        if backend == "local":
            try:
                result["count"] = self.index.count()
                result["index_reachable"] = True
            except Exception as exc:  # readiness must report, not raise
                result["index_reachable"] = False
                result["error"] = str(exc)
                result["count"] = None
            result["ready"] = bool(model_loaded and result["index_reachable"])
            return result
        result.update(self._probe.state())
        result["ready"] = model_loaded
        return result

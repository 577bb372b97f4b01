"""The query path: analyse an image once, then search any of its objects.

Analysis (decode + orient + detect) is cached per image hash inside the pipeline, so a user who
switches between detected objects only pays for crop + embed + search.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from search_core.adaptation import CatalogueAdapter, CatalogueLabel
from search_core.config import Settings
from search_core.crop import crop
from search_core.duplicates import collapse_near_duplicates, near_duplicate_pairs
from search_core.errors import ImageError, ItemNotFoundError, SearchError
from search_core.filters import matches
from search_core.images import load_image, sha256_hex
from search_core.indexing import Indexer, IndexReport, ProgressCallback, parse_shard
from search_core.interfaces import (
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
from search_core.sources import (  # noqa: F401  (PREVIEW_*: re-exported for the UI)
    PREVIEW_NOT_INDEXED,
    PREVIEW_OUTSIDE_ROOTS,
    open_source,
    preview_policy,
    read_uri,
)
from search_core.tags import Tagger, facets, matching_tags
from search_core.types import Box, Detection, ItemMeta, SearchHit

log = logging.getLogger(__name__)

WHOLE = "whole"
AUTO = "auto"
#: detections used for the automatic choice must be this sure and this big
AUTO_MIN_CONFIDENCE = 50.0
AUTO_MIN_AREA = 0.04
OVERFETCH = 3
#: at most this many detections compete with the whole image for ``auto`` (each costs one
#: embedding, ~10-20 ms)
AUTO_MAX_OBJECTS = 3
#: an object replaces the whole image only when its best catalogue match scores this much higher
#: (chosen on GroceryStore train/ queries against the iconic catalogue: 0, 0.02, 0.05, 0.1 gave
#: Recall@1 0.295, 0.298, 0.309, 0.305, the whole image alone 0.302)
AUTO_OBJECT_MARGIN = 0.05
#: with SEARCH_RESULTS_PER_LABEL, candidates are fetched this many times over, so that capped
#: labels leave enough others to fill the page
PER_LABEL_FETCH = 8
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


def cap_per_label(hits: list[SearchHit], per_label: int) -> list[SearchHit]:
    """Best first, at most ``per_label`` hits of one label; unlabelled items are never capped,
    and hits of fewer than two labels (a flat folder is one label) are returned as they are.
    A page can therefore be shorter than asked when the catalogue has few labels.

    Why: in a catalogue of products (a folder each) ten photos of one product fill the first
    page, and when that product is the wrong one the right one is pushed off it. Capping keeps
    Recall@1 and raises Recall@10 (GroceryStore val -> train, SEARCH_RESULTS_PER_LABEL=3: see
    the README's relevance section), at the price of showing fewer photos of the best product
    (mAP@10 falls), which is why it is a setting and off by default."""
    ordered = sorted(hits, key=lambda h: -h.score)
    if len({hit.item.label for hit in ordered if hit.item.label}) < 2:
        return ordered
    counts: dict[str, int] = {}
    kept = []
    for hit in ordered:
        label = hit.item.label
        if label:
            if counts.get(label, 0) >= per_label:
                continue
            counts[label] = counts.get(label, 0) + 1
        kept.append(hit)
    return kept


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


#: Decoded query images kept for object switching, in pixels over all entries (3 bytes each):
#: 32 phone photos at 2048 px would otherwise pin ~300 MB; this caps the cache near 100 MB.
CACHE_MAX_PIXELS = 32_000_000


def _pixels(analyzed: AnalyzedImage) -> int:
    return analyzed.image.width * analyzed.image.height


def check_upload_size(size: int, limit: int) -> None:
    """ImageError for uploads over ``limit`` bytes. MB here are MiB, as SEARCH_MAX_UPLOAD_MB
    means them, so "60.0 MB; the limit is 50 MB" adds up for the user."""
    if size > limit:
        raise ImageError(
            f"the upload is too large ({size / 2**20:.1f} MB); the limit is "
            f"{limit / 2**20:g} MB (SEARCH_MAX_UPLOAD_MB)"
        )


class IndexProbe:
    """The last known state of a remote index, refreshed in a background thread.

    Why: a health check that calls OpenSearch inherits its 30 s timeout and retries, and the
    load balancer's check times out first. The probe starts at most one count at a time, at
    most every ``interval`` seconds, waits ``wait`` seconds for it, and otherwise answers with
    what it knew (``index_reachable`` is None until the first answer)."""

    def __init__(self, index: VectorIndex, *, interval: float = 30.0, wait: float = 0.5) -> None:
        self._index = index
        self._interval = interval
        self._wait = wait
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._state: dict[str, Any] = {"index_reachable": None, "count": None}
        self._checked = -float("inf")

    def _run(self) -> None:
        try:
            state: dict[str, Any] = {"index_reachable": True, "count": self._index.count()}
        except Exception as exc:  # reported, never raised
            state = {"index_reachable": False, "count": None, "index_error": str(exc)}
        with self._lock:
            self._state = state
            self._checked = time.monotonic()

    def state(self) -> dict[str, Any]:
        with self._lock:
            stale = time.monotonic() - self._checked > self._interval
            if stale and (self._thread is None or not self._thread.is_alive()):
                self._thread = threading.Thread(target=self._run, name="index-probe", daemon=True)
                self._thread.start()
            thread = self._thread
        if stale and thread is not None:
            thread.join(self._wait)
        with self._lock:
            age = time.monotonic() - self._checked
            checked = round(age, 1) if age != float("inf") else None
            return {**self._state, "index_checked_s_ago": checked}


class SearchPipeline:
    """Detector + embedder + index, and the background indexing jobs that feed the index."""

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

    def collapse(self, hits: list[SearchHit]) -> list[SearchHit]:
        """Near-duplicates folded into the higher result (needs the index's stored vectors:
        both indexes return them; elsewhere results stay as they are)."""
        if isinstance(self.index, ExpectsLookups):  # one request for the list (OpenSearch)
            self.index.expect_lookups([hit.item.sha256 for hit in hits])
        return collapse_near_duplicates(
            hits,
            self.index.vector_of if isinstance(self.index, LooksUpVectors) else None,
            self.settings.near_duplicate,
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
            raise ItemNotFoundError(f"no catalogue item has the id {sha256!r}")
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
        threshold = self.settings.near_duplicate
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
        report = self.indexer().run(
            source, prune=prune, shard=parse_shard(shard), progress=progress, stop=stop
        )
        self.adapt_after_ingest(report)
        return report

    def _run_job(
        self, source: str, prune: bool, stop: threading.Event, progress: ProgressCallback
    ) -> IndexReport:
        return self.index_source(source, prune=prune, progress=progress, stop=stop)

    def bootstrap_sample(self) -> bool:
        """Indexes the bundled sample catalogue in the background when the index is empty, so a
        newcomer's very first search returns results. True when a job was started."""
        sample = self.settings.sample_catalogue
        if sample is None or not sample.is_dir() or self.index.count() > 0:
            return False
        if self.jobs.active() is not None:
            return False
        self.jobs.start(str(sample))
        return True

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

    # -- relevance: catalogue adaptation, views, auto, catalogue labels ------------------------
    # Kept apart from the methods above on purpose: they are the seams other features wrap.

    def candidates(
        self,
        vector: np.ndarray,
        k: int,
        filters: dict[str, Any] | None = None,
        *,
        plain: bool = False,
    ) -> list[SearchHit]:
        """The index's top ``k``, in the catalogue-adapted space when the adaptation is active
        (for every backend: the adapter searches its projected copy of the catalogue), else
        the index's own plain search; at most SEARCH_RESULTS_PER_LABEL of one label."""
        per_label = self.settings.results_per_label
        if per_label <= 0:
            return self._nearest(vector, k, filters, plain)
        return cap_per_label(self._nearest(vector, k * PER_LABEL_FETCH, filters, plain),
                             per_label)[:k]

    def _nearest(
        self, vector: np.ndarray, k: int, filters: dict[str, Any] | None, plain: bool
    ) -> list[SearchHit]:
        if not plain:
            hits = self.adapter.search(vector, k, filters)
            if hits is not None:
                return hits
        return self.index.search(vector, k, filters)

    def adapt_after_ingest(self, report: IndexReport) -> None:
        """Refits the adaptation after an ingest that changed the catalogue (it decides itself
        whether the change is big enough to refit or only to re-project). Never fails the
        ingest: a failed fit leaves the plain search."""
        if not (report.indexed or report.pruned) and self.adapter.report.status != "none":
            return
        try:
            self.adapter.refresh()
        except Exception as exc:  # the ingest itself succeeded
            log.warning("catalogue adaptation failed, searching plainly: %s", exc)

    def prepare_adaptation(self) -> None:
        """Loads (or fits, when missing or stale) the adaptation: at start, before the first
        user, and before an evaluation."""
        try:
            self.adapter.refresh()
        except Exception as exc:  # an unreachable backend is reported elsewhere
            log.warning("catalogue adaptation not ready: %s", exc)

    def view_vector(self, analyzed: AnalyzedImage, box: Box | None) -> np.ndarray:
        """The embedding of one view (whole image or a region), cached per image: ``auto``, the
        catalogue labels and the search itself need the same vectors."""
        key = (analyzed.sha256, box)
        with self._cache_lock:
            if key in self._views:
                self._views.move_to_end(key)
                return self._views[key]
        vector = self.embedder.embed_query(image=crop(analyzed.image, box))
        with self._cache_lock:
            self._views[key] = vector
            while len(self._views) > self._cache_size * (LABEL_MAX_OBJECTS + 1):
                self._views.popitem(last=False)
        return vector

    def best_match(self, vector: np.ndarray, *, judge: bool = True) -> CatalogueLabel | None:
        """The catalogue's best match for a view: label and score in the search space, and
        (``judge``) whether it is close: its plain cosine reaches the threshold calibrated on
        the catalogue's own scores (plain, because a projection fitted on a few labels maps
        unrelated photos near one of them)."""
        hits = self.candidates(vector, 1)
        if not hits:
            return None
        close = True
        threshold = self.adapter.report.no_match_threshold
        if judge and threshold is not None:
            plain = hits if not self.adapter.active else self.index.search(vector, 1)
            close = bool(plain) and plain[0].score >= threshold
        return CatalogueLabel(
            hits[0].item.label if self.adapter.report.labels >= 2 else "", hits[0].score, close
        )

    def auto_object(self, analyzed: AnalyzedImage) -> int | None:
        """What ``auto`` searches with: among the whole image and the few most prominent
        confident detections, the view whose best catalogue match scores highest (None = the
        whole image, which wins ties and AUTO_OBJECT_MARGIN). On GroceryStore val -> train this
        is as good as the whole image; the detector-only guess (auto_choice) lost 7 points of
        Recall@1 there."""
        with self._cache_lock:
            if analyzed.sha256 in self._auto:
                return self._auto[analyzed.sha256]
        candidates = auto_candidates(analyzed.detections)[:AUTO_MAX_OBJECTS]
        chosen: int | None = None
        if candidates:
            whole = self.best_match(self.view_vector(analyzed, None), judge=False)
            best = whole.score if whole is not None else None
            if best is None:  # an empty catalogue: the detector's guess is all there is
                chosen = candidates[0]
            else:
                for number in candidates:
                    try:
                        match = self.best_match(
                            self.view_vector(analyzed, analyzed.detections[number].box),
                            judge=False,
                        )
                    except SearchError:  # a box too small to crop
                        continue
                    margin = AUTO_OBJECT_MARGIN if chosen is None else 0.0
                    if match is not None and match.score > best + margin:
                        best, chosen = match.score, number
        with self._cache_lock:
            self._auto[analyzed.sha256] = chosen
            while len(self._auto) > self._cache_size:
                self._auto.popitem(last=False)
        return chosen

    def whole_match(self, analyzed: AnalyzedImage) -> CatalogueLabel | None:
        """The catalogue's best match for the whole image (for a "no close match" notice)."""
        return self.best_match(self.view_vector(analyzed, None))

    def label_objects(self, analyzed: AnalyzedImage) -> AnalyzedImage:
        """The analysis with each detected object's best catalogue match filled in (the first
        LABEL_MAX_OBJECTS; one embedding each, so the UI asks once per upload, searches don't).
        ``choice_label`` then shows e.g. "Book 2 — 80 % · Kiwi · 46 %"."""
        if analyzed.catalogue or not analyzed.detections:
            return analyzed
        labels: list[CatalogueLabel | None] = []
        for number, detection in enumerate(analyzed.detections):
            match = None
            if number < LABEL_MAX_OBJECTS:
                try:
                    match = self.best_match(self.view_vector(analyzed, detection.box))
                except SearchError:
                    match = None
            labels.append(match)
        labelled = dataclasses.replace(analyzed, catalogue=tuple(labels))
        with self._cache_lock:
            if analyzed.sha256 in self._cache:
                self._cache[analyzed.sha256] = labelled
        return labelled

"""Relevance on top of the plain index search: the catalogue adaptation, the cached view
vectors, the ``auto`` choice of object and the catalogue's label for each detected object.

A mixin of SearchPipeline rather than its own object: these methods are the seams other
features wrap (``candidates`` is what every search goes through) and they share the
pipeline's caches and lock, so they stay methods of the pipeline, only kept in their own file.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from search_core.adaptation import CatalogueAdapter, CatalogueLabel
from search_core.config import Settings
from search_core.crop import crop
from search_core.errors import SearchError
from search_core.indexing import IndexReport
from search_core.interfaces import Embedder, VectorIndex
from search_core.query import (
    AUTO_MAX_OBJECTS,
    AUTO_OBJECT_MARGIN,
    LABEL_MAX_OBJECTS,
    AnalyzedImage,
    auto_candidates,
)
from search_core.ranking import PER_LABEL_FETCH, cap_per_label
from search_core.types import Box, SearchHit

log = logging.getLogger(__name__)


class CatalogueRelevance:
    """The relevance half of SearchPipeline (which sets these attributes in its __init__)."""

    settings: Settings
    embedder: Embedder
    index: VectorIndex
    adapter: CatalogueAdapter
    _cache: OrderedDict[str, AnalyzedImage]
    _cache_size: int
    _cache_lock: threading.Lock
    _views: OrderedDict[tuple[str, Box | None], np.ndarray]
    _auto: OrderedDict[str, int | None]

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

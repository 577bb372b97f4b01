"""Catalogue-aware adaptation: a linear projection learned from the catalogue's own labels.

Why: a generic ImageNet embedding ranks "same kind of thing" close, while a catalogue search wants
"same product". A catalogue organised in folders (a folder = a product or class; an item's
``label``) says which photos show the same product. Whitening the embedding by the spread of
photos *within* a label (shrunk towards the identity, keeping the directions that separate
labels) pushes apart look-alike products and pulls together shots of one product. Measured on
GroceryStore val -> train (default embedder, 80 % view) it takes Recall@1 from 0.59 to 0.85
(see the README's relevance section and ``bench/quality.py``).

Honesty and safety: the projection is fitted on the catalogue's vectors and labels only (queries
never), and it is *validated on the catalogue itself* before it is used: part of every label's
images is held out, the projection is fitted on the rest, and the held-out images are searched
against the rest with and without it. Only a clear Recall@1 gain switches it on; flat catalogues
(one label) and catalogues with one image per label keep the plain embedding and say why.

The fitted projection lives in ``SEARCH_DATA_DIR`` beside the index, keyed by a fingerprint of
the catalogue (count + hash of item ids and labels) and refitted when the catalogue changed by
more than :data:`REFIT_FRACTION` or gained labels. Searching happens in the projected space over
an in-memory copy of the projected catalogue (``d`` = 128 floats per image: 10k images are
5 MB and a search is a 10k x 128 product), for the local and the OpenSearch backend alike.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from threadpoolctl import threadpool_limits

from search_core.filters import matches as _matches  # the filters every backend applies
from search_core.interfaces import ListsVectors, VectorIndex
from search_core.types import ItemMeta, SearchHit

log = logging.getLogger(__name__)

ADAPT_MODES = ("auto", "off")
#: within-class covariance shrinkage towards a scaled identity (chosen on grocery train/ only:
#: a held-out split of train/ rated 0.2 at least as good as 0.1 and 0.4; re-checked at the 80 %
#: view with MAX_DIMS: 0.1-0.5 x 64-256 dims, best Recall@1 at 0.2 / 128, best mAP@10 among those)
SHRINKAGE = 0.2
#: output dimensions (capped by what the data supports)
MAX_DIMS = 128
#: fewer labelled images than this: nothing worth learning
MIN_ITEMS = 20
#: fits (and validates) on an even sample of at most this many images
MAX_FIT_ITEMS = 20_000
#: at most this many held-out images are searched to validate
MAX_VALIDATION_QUERIES = 2000
#: above this many images the adaptation stays off (its projected copy lives in memory)
MAX_ITEMS = 200_000
#: the held-out Recall@1 must improve by at least this much for the projection to be used
MIN_GAIN = 0.01
#: share of each label's images held out for validation: the ones least like the rest of their
#: label (see :func:`held_out_mask`)
HELD_OUT = 0.25
#: rows of a label's similarity matrix computed at once when choosing the held-out images
HELD_OUT_BLOCK = 1024
#: refit when this share of the catalogue changed since the last fit (or a label is new)
REFIT_FRACTION = 0.1
#: "No close match" (decided on plain cosines): a query whose best score is below what held-out
#: catalogue photos reach against a *different* label (the "impostor" score) at this
#: percentile, or, in a catalogue without labels, below this percentile of each image's
#: nearest-neighbour score. Chosen on GroceryStore train/ against 128 COCO photos that show no
#: groceries (the most lenient percentiles that still flag >= 97 % of them: 100 % and 98 %);
#: GroceryStore val/ was only used to report the rate on real queries.
IMPOSTOR_PERCENTILE = 10.0
#: below this :func:`label_coherence` a label is a folder of assorted products, not a class
#: (measured: assorted folders -0.03 to 0.07, real classes 0.14 and more)
MIN_COHERENCE = 0.1
#: ... judged only for labels of at least this many images: two or three photos of one
#: product can be unlike each other by chance (train/, 2 photos per product: down to -0.19),
#: while from 5 photos every real class scored 0.19 or more (30 random draws per size)
MIN_MIXED_IMAGES = 5
#: mixed labels named in the report (the count is always there)
MAX_NAMED = 20
NEIGHBOUR_PERCENTILE = 1.0
FILE_VERSION = 1
NO_CLOSE_MATCH = "no close match in this catalogue"


@dataclass
class AdaptationReport:
    """What the adaptation learned, for ``stats`` and the logs."""

    status: str = "none"  # active | plain | off | none (not fitted yet)
    reason: str = ""
    method: str = "within-class whitening"
    items: int = 0
    labels: int = 0
    dims: int = 0
    held_out: int = 0
    recall1_plain: float | None = None
    recall1_adapted: float | None = None
    fit_seconds: float = 0.0
    fingerprint: str = ""
    model: str = ""
    label_set_hash: str = ""
    no_match_threshold: float | None = None
    fitted_at: float = 0.0
    #: folders whose images are no more alike than the catalogue at large (assorted
    #: products): fitted as single images, not as a class (at most MAX_NAMED of them named)
    mixed_labels: list[str] = field(default_factory=list)
    mixed_label_count: int = 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("label_set_hash")
        return data


@dataclass(frozen=True)
class Projection:
    """x -> normalise((x - mean) @ matrix)."""

    mean: np.ndarray
    matrix: np.ndarray

    @property
    def dims(self) -> int:
        return int(self.matrix.shape[1])

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        single = vectors.ndim == 1
        projected = (vectors.reshape(-1, self.mean.shape[0]) - self.mean) @ self.matrix
        projected /= np.maximum(np.linalg.norm(projected, axis=1, keepdims=True), 1e-12)
        projected = projected.astype(np.float32)
        return np.asarray(projected[0] if single else projected)


# -- fitting -------------------------------------------------------------------------------------


def _label_sums(x: np.ndarray, inverse: np.ndarray, labels: int) -> np.ndarray:
    """The sum of each label's vectors, through a sparse one-hot matrix: a dense one (labels x
    images) would take 800 MB for 20,000 images of 5,000 products."""
    from scipy.sparse import csr_matrix

    onehot = csr_matrix(
        (np.ones(len(inverse)), (inverse, np.arange(len(inverse)))), shape=(labels, len(inverse))
    )
    return np.asarray(onehot @ x)


def label_coherence(vectors: np.ndarray, labels: Sequence[str]) -> dict[str, float]:
    """For each label with 2+ images (and not the only one): how much more alike its images
    are than they are to the rest of the catalogue, as a share of the room left up to 1:
    (mean cosine within - mean cosine to the others) / (1 - mean cosine to the others).

    Why: a label is a folder name, and not every folder is a product. A folder of assorted
    products (a flat "new arrivals" folder inside a catalogue of product folders) scores about
    0 (GroceryStore train/: -0.03 for 20 random products; a folder of 20 resized product shots
    in the sample catalogue: 0.07), every real class well above (train/: 0.31 or more; the
    sample catalogue, 4 photos per product: 0.13 or more). Fitting such a folder as a class
    teaches the projection to merge different products. Small folders are not judged (see
    MIN_MIXED_IMAGES): 5 random products score up to 0.30 when some are alike."""
    x = np.asarray(vectors, dtype=np.float64)
    names, inverse = np.unique(np.asarray(labels), return_inverse=True)
    sums = _label_sums(x, inverse, len(names))
    counts = np.bincount(inverse, minlength=len(names))
    squares = np.bincount(inverse, weights=np.einsum("ij,ij->i", x, x), minlength=len(names))
    total = sums.sum(axis=0)
    coherence: dict[str, float] = {}
    for k, name in enumerate(names):
        n, others = int(counts[k]), len(x) - int(counts[k])
        if n < 2 or others == 0:
            continue
        within = (float(sums[k] @ sums[k]) - float(squares[k])) / (n * (n - 1))
        between = float(sums[k] @ (total - sums[k])) / (n * others)
        coherence[str(name)] = (within - between) / max(1.0 - between, 1e-6)
    return coherence


def fit_projection(
    vectors: np.ndarray, labels: Sequence[str] | np.ndarray, *, shrinkage: float = SHRINKAGE,
    max_dims: int = MAX_DIMS,
) -> Projection:
    """Within-class whitening: whiten by the (shrunk) covariance of images around their label's
    mean, then keep the ``max_dims`` directions of largest total variance in that space (the
    ones that still separate labels once within-label noise is unit)."""
    x = np.asarray(vectors, dtype=np.float64)
    classes, inverse = np.unique(np.asarray(labels), return_inverse=True)
    mean = x.mean(axis=0)
    class_means = _label_sums(x, inverse, len(classes)) / np.bincount(inverse)[:, None]
    centred = x - class_means[inverse]
    # The two paths give the same projection; the SVD path is faster only well below D images
    # (1,984 x 2,560: SVDs 6.8 s against 1.6 s for the eigenproblems).
    if 2 * len(x) < x.shape[1]:
        matrix = _fit_low_rank(x - mean, centred, shrinkage, max_dims)
    else:
        # float32 eigenproblems: 4x faster than float64 with the same retrieval results
        # (grocery val -> train R@1/R@5/R@10 identical to three decimals)
        matrix = _fit_full(
            (x - mean).astype(np.float32), centred.astype(np.float32), shrinkage, max_dims
        )
    return Projection(mean.astype(np.float32), matrix.astype(np.float32))


def _fit_full(x: np.ndarray, centred: np.ndarray, shrinkage: float, max_dims: int) -> np.ndarray:
    """D x D eigenproblems: the within-label covariance, then the whitened total covariance.

    SciPy's LAPACK drivers, not NumPy's: at D = 2560 (the default embedder) the divide-and-
    conquer solver takes 0.9 s against 2.2 s for ``numpy.linalg.eigh`` on one core, and the
    second problem only needs its top ``max_dims`` eigenpairs (0.4 s), so a fit of 2,640 images
    went from 14 s to a few seconds at the end of an ingest."""
    from scipy.linalg import eigh

    d = x.shape[1]
    values, vecs = eigh(centred.T @ centred / len(x), driver="evd")
    values = (1 - shrinkage) * np.maximum(values, 0) + shrinkage * values.mean()
    whiten = vecs / np.sqrt(values)
    z = x @ whiten
    keep = int(min(max_dims, len(x) - 1, d))
    total, directions = eigh(z.T @ z / len(x), subset_by_index=[d - keep, d - 1], driver="evr")
    order = np.argsort(-total)
    dims = int(np.sum(total > total[order[0]] * 1e-9))
    return np.asarray(whiten @ directions[:, order[:dims]])


def _fit_low_rank(
    x: np.ndarray, centred: np.ndarray, shrinkage: float, max_dims: int
) -> np.ndarray:
    """The same projection for fewer images than dimensions, through SVDs of the N x D data
    instead of D x D eigenproblems (a 300-image catalogue fits in a fraction of a second
    instead of seconds). The within-label covariance is zero outside the span of the data, so
    the shrunk whitening is explicit there: one scale inside each singular direction, one
    outside them all."""
    n, d = x.shape
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    values = singular**2 / n
    floor = shrinkage * values.sum() / d  # shrinkage * trace / D, as in the D x D path
    inside = 1 / np.sqrt((1 - shrinkage) * values + floor)
    outside = 1 / np.sqrt(floor)

    def whiten(rows: np.ndarray) -> np.ndarray:
        coords = rows @ vt.T
        return np.asarray((coords * inside) @ vt + outside * (rows - coords @ vt))

    z = whiten(x)
    _, total, directions = np.linalg.svd(z, full_matrices=False)
    dims = int(min(max_dims, np.sum(total > total[0] * 1e-6), n - 1))
    # the whitening is symmetric: W @ directions = whiten(directions^T)^T
    return whiten(directions[:dims]).T


def held_out_mask(
    vectors: np.ndarray, labels: Sequence[str], share: float = HELD_OUT
) -> np.ndarray:
    """Per label with >= 2 images: the ``share`` of its images least like the rest of the label
    (lowest best cosine to another image of the label; at least one, always leaving one in the
    catalogue part).

    Why not a random or a last-in-file-order share: a catalogue's photos of one product are
    mostly shots of a few sessions, so a held-out photo then has a near-twin left in the
    catalogue part and every candidate wins (GroceryStore train/: 0.97-0.985 Recall@1 with or
    without a projection, so the projection was switched off although it takes real queries
    from 0.60 to 0.85). The least-alike photos look like what users send, new shots
    (median best same-class cosine 0.79 against 0.74 for GroceryStore val/ photos and 0.88 for
    a contiguous quarter). Per label only, so the cost is the sum of squared label sizes."""
    by_label: dict[str, list[int]] = {}
    for position, label in enumerate(labels):
        by_label.setdefault(label, []).append(position)
    mask = np.zeros(len(labels), dtype=bool)
    for positions in by_label.values():
        if len(positions) < 2:
            continue
        members = np.asarray(positions)
        label_vectors = vectors[members]
        best = np.empty(len(members), dtype=np.float64)
        # in row blocks: one label may hold all 20,000 fitted images (a 1.6 GB square at once)
        for start in range(0, len(members), HELD_OUT_BLOCK):
            block = label_vectors[start : start + HELD_OUT_BLOCK] @ label_vectors.T
            rows = np.arange(len(block))
            block[rows, rows + start] = -np.inf
            best[start : start + len(block)] = block.max(axis=1)
        take = min(len(members) - 1, max(1, round(len(members) * share)))
        mask[members[np.argsort(best, kind="stable")[:take]]] = True
    return mask


def recall_at_1(scores: np.ndarray, query_labels: np.ndarray, corpus_labels: np.ndarray) -> float:
    """Share of queries (rows of ``scores`` against the corpus) whose best match has their
    label."""
    if len(scores) == 0:
        return 0.0
    return float(np.mean(corpus_labels[np.argmax(scores, axis=1)] == query_labels))


def impostor_threshold(
    scores: np.ndarray, query_labels: np.ndarray, corpus_labels: np.ndarray, percentile: float
) -> float | None:
    """The "no close match" threshold from held-out catalogue images (new photos, unseen by
    the fit): their best score against images of OTHER labels, at ``percentile``. Genuine
    scores would be flattered by near-identical shots of one session in the catalogue;
    impostor scores say how high an unrelated product can reach."""
    other = query_labels[:, None] != corpus_labels[None, :]
    best = np.where(other, scores, -np.inf).max(axis=1)
    best = best[np.isfinite(best)]
    if len(best) == 0:
        return None
    return round(float(np.percentile(best, percentile)), 4)


def nearest_neighbour_scores(vectors: np.ndarray, limit: int = 1000) -> np.ndarray:
    """Each image's best score against the other catalogue images (exact duplicates, score
    > 0.999, excluded), on at most ``limit`` images (evenly spaced) to bound the cost."""
    if len(vectors) < 2:
        return np.zeros(0, dtype=np.float32)
    step = max(1, len(vectors) // limit)
    sample = np.arange(0, len(vectors), step)
    scores = vectors[sample] @ vectors.T
    scores[np.arange(len(sample)), sample] = -np.inf
    scores[scores > 0.999] = -np.inf
    best = scores.max(axis=1)
    return np.asarray(best[np.isfinite(best)])


def calibrate(space: np.ndarray) -> float | None:
    """The "no close match" threshold without labels (see NEIGHBOUR_PERCENTILE)."""
    scores = nearest_neighbour_scores(space)
    if not len(scores):
        return None
    return round(float(np.percentile(scores, NEIGHBOUR_PERCENTILE)), 4)


def fingerprint(items: Sequence[ItemMeta], model_id: str) -> str:
    digest = hashlib.sha256(model_id.encode())
    for item in sorted(items, key=lambda i: i.sha256):
        digest.update(f"{item.sha256}\t{item.label}\n".encode())
    return f"{len(items)}-{digest.hexdigest()[:16]}"


def label_set_hash(labels: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sorted(set(labels))).encode()).hexdigest()[:16]


def fit(vectors: np.ndarray, items: Sequence[ItemMeta], model_id: str, *,
        require_gain: bool = True) -> tuple[Projection | None, AdaptationReport]:
    """Fits, validates on a held-out part of the catalogue, and decides. The projection is
    returned only when it wins (``require_gain=False``: whenever labels allow a fit, for
    benchmarks of the adapted search path); the report says what happened either way.

    BLAS runs on one thread here: on a busy machine (searches, an ingest, other processes)
    multi-threaded eigensolvers wait on each other -- the 2,640-image fit took 22-27 s with
    two threads against 3-5 s with one, at load 8 on two cores."""
    with threadpool_limits(limits=1, user_api="blas"):
        return _fit(vectors, items, model_id, require_gain)


def _fit(vectors: np.ndarray, items: Sequence[ItemMeta], model_id: str, require_gain: bool
         ) -> tuple[Projection | None, AdaptationReport]:
    began = time.perf_counter()
    labels = [item.label for item in items]
    counts = Counter(labels)
    report = AdaptationReport(
        items=len(items), labels=len(counts), fingerprint=fingerprint(items, model_id),
        model=model_id, label_set_hash=label_set_hash(labels),
    )
    if len(items) > MAX_FIT_ITEMS:
        # A covariance of D x D is estimated well from far fewer images; the cost is linear
        # in the images, so big catalogues fit on an even sample.
        keep = np.random.default_rng(0).choice(len(items), MAX_FIT_ITEMS, replace=False)
        keep.sort()
        vectors = vectors[keep]
        items = [items[i] for i in keep]
        labels = [labels[i] for i in keep]
        counts = Counter(labels)

    def finish(projection: Projection | None, status: str, reason: str,
               threshold: float | None = None) -> tuple[Projection | None, AdaptationReport]:
        report.no_match_threshold = calibrate(vectors) if threshold is None else threshold
        report.status, report.reason = status, reason
        report.fitted_at = round(time.time(), 1)
        report.fit_seconds = round(time.perf_counter() - began, 3)
        return projection, report

    # Folders of assorted products are no class: their images take part one by one (distinct
    # labels), so the projection never learns to merge what they hold.
    sizes = Counter(labels)
    mixed = sorted(name for name, value in label_coherence(vectors, labels).items()
                   if value < MIN_COHERENCE and sizes[name] >= MIN_MIXED_IMAGES)
    if mixed:
        report.mixed_label_count = len(mixed)
        report.mixed_labels = mixed[:MAX_NAMED]
        mixed_set = set(mixed)
        labels = [f"\x00{i}" if label in mixed_set else label for i, label in enumerate(labels)]
        counts = Counter(labels)
    repeated = sum(n for n in counts.values() if n >= 2)
    if report.items > MAX_ITEMS:
        return finish(None, "plain", f"catalogue larger than {MAX_ITEMS:,} images: the "
                      "projected copy would not fit in memory comfortably")
    if len(counts) < 2 or (len(counts) == 1 and "" in counts):
        return finish(None, "plain", "flat catalogue (one label): nothing to learn from")
    if sum(1 for n in counts.values() if n >= 2) < 2 or repeated < MIN_ITEMS:
        return finish(None, "plain", f"too few images per label to learn from ({repeated} "
                      f"images in labels with 2+ images; needs {MIN_ITEMS} in 2+ labels)")
    held = held_out_mask(vectors, labels)
    label_array = np.asarray(labels)
    train = vectors[~held]
    projection = fit_projection(train, label_array[~held])
    queries = np.flatnonzero(held)
    queries = queries[:: max(1, len(queries) // MAX_VALIDATION_QUERIES)]
    test, test_labels = vectors[queries], label_array[queries]
    plain_scores = test @ train.T
    adapted_scores = projection.apply(test) @ projection.apply(train).T
    plain = recall_at_1(plain_scores, test_labels, label_array[~held])
    adapted = recall_at_1(adapted_scores, test_labels, label_array[~held])
    report.held_out = len(queries)
    # "No close match" is decided in the plain space whatever the search uses: a projection
    # fitted on a few labels maps any unrelated photo near one of them (a giraffe scored 0.82
    # against milk in a 10-label catalogue), while plain cosines keep their meaning.
    threshold = impostor_threshold(plain_scores, test_labels, label_array[~held],
                                   IMPOSTOR_PERCENTILE)
    report.recall1_plain = round(plain, 4)
    report.recall1_adapted = round(adapted, 4)
    if require_gain and adapted < plain + MIN_GAIN:
        return finish(None, "plain", f"no gain on the held-out catalogue images "
                      f"(Recall@1 {plain:.3f} -> {adapted:.3f})", threshold)
    final = fit_projection(vectors, label_array)
    report.dims = final.dims
    reason = f"held-out Recall@1 {plain:.3f} -> {adapted:.3f}"
    if mixed:
        reason += (f"; {len(mixed)} folder(s) of assorted products fitted as single images: "
                   + ", ".join(mixed[:3]) + (", ..." if len(mixed) > 3 else ""))
    return finish(final, "active", reason, threshold)


# -- persistence ---------------------------------------------------------------------------------


def save(path: Path, projection: Projection | None, report: AdaptationReport) -> None:
    """Written atomically: a temporary file of this writer's own (two ingests ending together
    must not write into one), flushed to disk, then renamed over the old one, so a reader or a
    crash only ever sees a whole file. A failed write (a full disk) leaves no temporary file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    empty = np.zeros((0,), np.float32)
    try:
        with os.fdopen(handle, "wb") as out:
            os.fchmod(out.fileno(), 0o644)  # as the index database (mkstemp makes it 0600)
            np.savez(
                out,
                version=np.array(FILE_VERSION),
                report=np.array(json.dumps(asdict(report))),
                mean=empty if projection is None else projection.mean,
                matrix=empty if projection is None else projection.matrix,
            )
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _remove_abandoned_temps(path)


#: a temporary file older than this was left by a writer that was killed (a save takes
#: well under a second), never by one still writing
ABANDONED_TEMP_SECONDS = 3600.0


def _remove_abandoned_temps(path: Path) -> None:
    """Deletes the temporary files of writers killed mid-save (kill -9, OOM, power cut), so
    they do not pile up in the data dir."""
    cutoff = time.time() - ABANDONED_TEMP_SECONDS
    for leftover in path.parent.glob(f".{path.stem}.*.tmp"):
        try:
            if leftover.stat().st_mtime < cutoff:
                leftover.unlink()
        except OSError:  # another process removed it, or it is not ours to remove
            continue


def load(path: Path) -> tuple[Projection | None, AdaptationReport] | None:
    """None when missing or unreadable (it is then refitted): a crash, a full disk or a hand
    edit can leave it empty, cut short or not a zip at all. Never unpickles."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if int(data["version"]) != FILE_VERSION:
                return None
            report = AdaptationReport(**json.loads(str(data["report"])))
            mean, matrix = data["mean"], data["matrix"]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as exc:
        log.warning("ignoring the saved adaptation %s: %s", path, exc)
        return None
    if matrix.size and (mean.ndim != 1 or matrix.ndim != 2 or matrix.shape[0] != mean.shape[0]):
        log.warning("ignoring the saved adaptation %s: inconsistent shapes", path)
        return None
    projection = Projection(mean, matrix) if matrix.size else None
    return projection, report


def fits_vectors(projection: Projection | None, vectors: np.ndarray) -> bool:
    """Whether a saved projection applies to these stored vectors (same dimension): a file
    copied from another data dir can claim the right model and still not fit."""
    return projection is None or (
        vectors.ndim == 2 and projection.mean.shape[0] == vectors.shape[1]
    )


def needs_refit(report: AdaptationReport, items: Sequence[ItemMeta], model_id: str) -> bool:
    """A small change (a few images added or removed) keeps the projection: it still describes
    the catalogue; a change of more than REFIT_FRACTION, a new label or another model refits."""
    if report.model != model_id:
        return True
    if report.fingerprint == fingerprint(items, model_id):
        return False
    changed = abs(len(items) - report.items)
    if changed > REFIT_FRACTION * max(report.items, 1):
        return True
    return label_set_hash([item.label for item in items]) != report.label_set_hash


# -- the runtime state ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CatalogueLabel:
    """The catalogue's best match for a view: its label, score (0-1) and whether it is close."""

    label: str
    score: float
    close: bool

    def text(self) -> str:
        """ "Kiwi · 46 %", "no close match in this catalogue", or "" (a close match in a
        catalogue without labels: nothing useful to add)."""
        if not self.close:
            return NO_CLOSE_MATCH
        if not self.label:
            return ""
        return f"{self.label} · {max(self.score, 0.0) * 100:.0f} %"


def read_vectors(index: VectorIndex) -> tuple[np.ndarray, list[ItemMeta]]:
    """All stored vectors with their items, from any backend that offers ``vectors()``."""
    if not isinstance(index, ListsVectors):
        raise NotImplementedError(f"{type(index).__name__} cannot list its vectors")
    matrix, items = index.vectors()
    return np.asarray(matrix, dtype=np.float32), list(items)


class CatalogueAdapter:
    """The adaptation of one index: keeps the projection and the projected catalogue in memory
    and searches there. Thread-safe. Fitting happens at the end of an ingest and at start
    (``warm_up``); a search only fits when nothing was ever fitted or saved (a fresh CLI
    process on an index built before this feature), and while another thread refreshes,
    searches use the previous state."""

    #: how often a search may ask the index whether it changed (a count per check; a change
    #: re-reads and re-projects every vector, so not after every batch of a running ingest)
    CHECK_SECONDS: ClassVar[dict[str, float]] = {"local": 5.0}
    #: remote backends: a change means a scan of every vector (~12 KB each as JSON)
    DEFAULT_CHECK_SECONDS = 300.0
    #: backends whose count is a local query: every adapted search first checks that the
    #: projected copy still holds as many images as the index, and searches plainly when not.
    #: Between two checks an ingest adds images the copy does not have yet; searching only the
    #: copy would hide them (a filter on a label indexed since then found nothing at all).
    EXACT_COUNT: ClassVar[frozenset[str]] = frozenset({"local"})

    def __init__(
        self, index: VectorIndex, data_dir: Path, model_id: str, mode: str = "auto"
    ) -> None:
        self.index = index
        self.model_id = model_id
        self.mode = mode
        backend = index.name
        self.path = Path(data_dir) / f"adaptation-{backend}.npz"
        self.check_seconds = self.CHECK_SECONDS.get(backend, self.DEFAULT_CHECK_SECONDS)
        self._exact_count = backend in self.EXACT_COUNT
        # Whether this process ever refreshed: only a process that never did (a CLI search on
        # an index built before this feature) may fit from a search. A server refreshes at
        # start; fitting later from a search would fit on whatever part of a running ingest
        # happens to be indexed.
        self._refreshed = False
        self._ingests = 0  # ingests of this process now adding images (under self._lock)
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self.projection: Projection | None = None
        self.report = AdaptationReport(status="none")  # until the first refresh
        self._matrix = np.zeros((0, 0), np.float32)  # the catalogue in the search space
        self._items: list[ItemMeta] = []
        self._count = -1
        self._checked = 0.0
        self._file_mtime = 0.0

    # -- state ---------------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return self.projection is not None

    def refresh(
        self, *, allow_fit: bool = True, force_fit: bool = False, require_gain: bool = True
    ) -> AdaptationReport:
        """Reads the catalogue, loads the saved projection or (re)fits it when stale, and
        rebuilds the in-memory search space. Run after an ingest and at start. With
        ``allow_fit=False`` (a search noticed a changed index) a stale projection is kept and
        only re-applied: fitting takes seconds and belongs to the end of an ingest. With
        SEARCH_ADAPT=off only the "no close match" threshold is calibrated."""
        with self._refresh_lock:
            count = self.index.count()
            if count > MAX_ITEMS:  # decided before reading (a remote scan of millions)
                report = AdaptationReport(
                    status="plain", items=count, model=self.model_id,
                    reason=f"catalogue larger than {MAX_ITEMS:,} images: the projected copy "
                    "would not fit in memory comfortably",
                )
                with self._lock:
                    self.projection, self.report = None, report
                    self._matrix, self._items = np.zeros((0, 0), np.float32), []
                    self._count, self._checked = count, time.monotonic()
                    self._refreshed = True
                return report
            try:
                vectors, items = read_vectors(self.index)
            except NotImplementedError as exc:
                self.report = AdaptationReport(status="plain", reason=str(exc))
                self._refreshed = True
                return self.report
            saved = None if force_fit else load(self.path)
            if saved is not None and not fits_vectors(saved[0], vectors):
                log.warning("the saved adaptation %s does not fit this index: refitting",
                            self.path)
                saved = None
            if self.mode != "off" and saved is not None and not needs_refit(
                saved[1], items, self.model_id
            ):
                projection, report = saved
            elif not allow_fit:
                projection, report = self.projection, self.report
                if report.status == "none" and items:
                    report = AdaptationReport(
                        status="none", reason="not fitted yet: fitted at the end of the ingest "
                        "that is adding images (or when the app starts)",
                    )
                elif projection is not None and label_set_hash(
                    [item.label for item in items]
                ) != report.label_set_hash:
                    # Labels the projection never saw (an ingest is still running, or another
                    # process added them and has not saved its refit yet): it would map their
                    # photos anywhere (a pepper photo found "Beef Tomato" against a projection
                    # fitted on the first half of a catalogue), so search plainly until the
                    # refit at the end of the ingest.
                    projection, report = None, dataclasses.replace(
                        report, status="plain", dims=0,
                        reason="refit pending: the catalogue has labels the projection was "
                        "not fitted on",
                    )
            elif len(items) == 0:
                projection, report = None, AdaptationReport(status="none", reason="empty index")
            else:
                if self.mode == "off":
                    projection, report = None, AdaptationReport(
                        status="off", reason="SEARCH_ADAPT=off", items=len(items),
                        labels=len({i.label for i in items}), model=self.model_id,
                        fingerprint=fingerprint(items, self.model_id),
                        label_set_hash=label_set_hash([i.label for i in items]),
                    )
                    report.no_match_threshold = calibrate(vectors)
                else:
                    projection, report = fit(
                        vectors, items, self.model_id, require_gain=require_gain
                    )
                    try:
                        save(self.path, projection, report)
                    except OSError as exc:  # read-only data dir: keep it in memory only
                        log.warning("could not save the adaptation to %s: %s", self.path, exc)
                log.info("catalogue adaptation: %s (%s)", report.status, report.reason)
            # Only the projected catalogue is kept (d floats per image); the plain one stays in
            # the index, which answers plain searches itself.
            space = projection.apply(vectors) if projection is not None else None
            with self._lock:
                self.projection = projection
                self.report = report
                self._matrix = space if space is not None else np.zeros((0, 0), np.float32)
                self._items = items if space is not None else []
                self._count = len(items)
                self._checked = time.monotonic()
                self._file_mtime = self._mtime()
                self._refreshed = True
            return report

    def _mtime(self) -> float:
        try:
            return self.path.stat().st_mtime
        except OSError:
            return 0.0

    def ensure(self) -> None:
        """Refreshes when the index or the saved projection (another process indexed) changed
        since the last refresh, checked at most every ``check_seconds`` (a remote count is a
        round trip). Fits only when nothing was ever fitted or loaded."""
        now = time.monotonic()
        if self._count >= 0 and now - self._checked < self.check_seconds:
            return
        if self._refresh_lock.locked():  # another thread is refreshing: use the current state
            return
        if self._ingests:  # searched plainly meanwhile; the ingest refreshes at its end
            return
        self._checked = now
        try:
            count = self.index.count()
        except Exception as exc:  # the plain search reports the backend's error itself
            log.warning("adaptation: cannot count the index: %s", exc)
            return
        if count != self._count or self._mtime() != self._file_mtime:
            self.refresh(allow_fit=not self._refreshed)

    @contextlib.contextmanager
    def ingesting(self) -> Iterator[None]:
        """Wraps an ingest of this process and its refresh: its images reach the index before
        the projected copy, so until that refresh the plain index answers (for every backend;
        a remote count is too slow to ask at each search)."""
        with self._lock:
            self._ingests += 1
        try:
            yield
        finally:
            with self._lock:
                self._ingests -= 1

    def behind(self) -> bool:
        """True when the projected copy may miss images the index now holds (or still hold
        removed ones), so the plain index must answer: an ingest of this process is running,
        or the local index's count differs from the copy's. Another process's ingest into a
        remote index is noticed at the next check (``check_seconds``)."""
        if not self.active:
            return False
        if self._ingests:
            return True
        if not self._exact_count:
            return False
        try:
            return self.index.count() != self._count
        except Exception:  # the plain search reports the backend's error itself
            return True

    def describe(self) -> dict[str, Any]:
        described = {"mode": self.mode, **self.report.to_dict()}
        if self.behind():
            described.update(
                status="plain", reason="the catalogue changed since the last refresh (or an "
                "ingest is running): searching plainly until the projected copy catches up "
                f"(at the end of the ingest, or within {self.check_seconds:g} s)",
            )
        return described

    # -- search --------------------------------------------------------------------------------

    def space(self, vector: np.ndarray) -> np.ndarray:
        """A query vector in the search space (projected when the adaptation is active)."""
        projection = self.projection
        return vector if projection is None else projection.apply(vector)

    def search(self, vector: np.ndarray, k: int, filters: dict[str, Any] | None = None
               ) -> list[SearchHit] | None:
        """Top ``k`` in the projected space, or None when the plain index should answer
        (adaptation off, not active, or not ready). Results are checked against the index, so
        an image deleted since the last refresh never comes back."""
        self.ensure()
        with self._lock:
            projection, matrix, items = self.projection, self._matrix, self._items
        if projection is None or len(items) == 0 or self.behind():
            return None
        scores = matrix @ projection.apply(vector)
        if filters:
            mask = np.array([_matches(item, filters) for item in items], dtype=bool)
            scores = np.where(mask, scores, -np.inf)
        want = min(len(items), max(k, 1) * 2 + 10)
        top = np.argpartition(-scores, want - 1)[:want]
        top = top[np.argsort(-scores[top], kind="stable")]
        top = top[np.isfinite(scores[top])]
        present = self.index.known_hashes(items[p].sha256 for p in top)
        return [
            SearchHit(uri=items[p].uri, score=float(scores[p]), item=items[p])
            for p in top
            if items[p].sha256 in present
        ][:k]

"""Near-duplicates: the same photo re-encoded, resized or slightly cropped.

A catalogue often holds one product photo several times (a thumbnail and the original, a
re-export): in a result list they push different products off the first screen. Results whose
cosine to a higher result reaches the threshold fold into that result (the UI shows "+N
similar"). The threshold (SEARCH_NEAR_DUPLICATE) is calibrated by ``bench/near_duplicates.py``:
edited copies of a photo against different photos of the same product.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from search_core.types import SearchHit

VectorLookup = Callable[[str], "np.ndarray | None"]


def collapse_near_duplicates(
    hits: Sequence[SearchHit], vector_of: VectorLookup | None, threshold: float
) -> list[SearchHit]:
    """``hits`` (best first) with each near-duplicate folded into the first higher hit it
    resembles, as that hit's ``similar``. Unchanged when disabled or vectors are unavailable."""
    if vector_of is None or threshold <= 0 or len(hits) < 2:
        return list(hits)
    heads: list[SearchHit] = []
    compared: list[tuple[int, np.ndarray]] = []  # (head number, vector) of heads with a vector
    folded: dict[int, list[SearchHit]] = {}
    for hit in hits:
        vector = vector_of(hit.item.sha256)
        if vector is not None and compared:
            similarity = np.stack([v for _, v in compared]) @ vector
            best = int(np.argmax(similarity))
            if float(similarity[best]) >= threshold:
                folded.setdefault(compared[best][0], []).append(hit)
                continue
        if vector is not None:
            compared.append((len(heads), vector))
        heads.append(hit)
    return [
        dataclasses.replace(head, similar=tuple(folded[n])) if n in folded else head
        for n, head in enumerate(heads)
    ]


def near_duplicate_pairs(
    matrix: np.ndarray, threshold: float, *, block: int = 2048
) -> list[tuple[int, int, float]]:
    """(i, j, cosine) with i < j for every pair of rows of ``matrix`` at or above
    ``threshold``, computed in blocks (bounded memory: ``block`` × N scores at a time)."""
    pairs: list[tuple[int, int, float]] = []
    if threshold <= 0 or len(matrix) < 2:
        return pairs
    for start in range(0, len(matrix), block):
        scores = matrix[start : start + block] @ matrix.T
        rows, cols = np.nonzero(scores >= threshold)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            i = start + r
            if i < c:
                pairs.append((i, c, float(scores[r, c])))
    return pairs

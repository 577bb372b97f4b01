"""Vector arithmetic every embedder shares, written once so that all of them agree on it.

The indexes compare vectors by inner product, which is the cosine only for unit-length rows: an
embedder that normalised slightly differently (another epsilon, float64 output) would rank its
results differently from the others, so they all call :func:`l2_normalise`.
"""

from __future__ import annotations

import numpy as np

#: floor for a norm: an all-zero row stays zero instead of becoming NaN
EPSILON = 1e-12


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    """Unit-length float32 rows (along the last axis, so one vector or a batch)."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.asarray(vectors / np.maximum(norms, EPSILON), dtype=np.float32)

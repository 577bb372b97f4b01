"""One check of query and stored vectors shared by every index backend.

Why shared: the local index and OpenSearch used to disagree (ConfigError here, ValueError
there, a zero vector accepted by one and refused by the other), so a caller could not handle a
bad vector once for both. Both now raise :class:`VectorError` with the same wording.
"""

from __future__ import annotations

import numpy as np

from search_core.errors import ConfigError


class VectorError(ConfigError):
    """A vector of the wrong dimension, zero length or non-finite values. A ConfigError because
    it means the embedder does not match the index (or is broken), which every file of a run
    would hit alike: the indexer stops instead of failing each file."""


def check_query(vector: np.ndarray, dimension: int) -> np.ndarray:
    """The query as a unit-length float32 row of ``dimension`` values; VectorError otherwise."""
    query = np.asarray(vector, dtype=np.float32).reshape(-1)
    if query.shape[0] != dimension:
        raise VectorError(
            f"query dimension {query.shape[0]} does not match the index ({dimension})"
        )
    norm = float(np.linalg.norm(query))
    if norm == 0.0 or not np.isfinite(norm):
        raise VectorError("the query vector is zero or not finite: nothing to compare")
    return query / norm


def check_vectors(vectors: np.ndarray, count: int, dimension: int) -> np.ndarray:
    """``count`` rows of ``dimension`` float32 values, each finite and non-zero (normalised)."""
    matrix = np.asarray(vectors, dtype=np.float32)
    if count == 0:
        return matrix.reshape(0, dimension)
    if matrix.ndim != 2 or matrix.shape[0] != count:
        raise VectorError(f"{count} items but vectors of shape {matrix.shape}")
    if matrix.shape[1] != dimension:
        raise VectorError(
            f"vector dimension {matrix.shape[1]} does not match the index ({dimension})"
        )
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise VectorError("zero or non-finite vector: cannot index it for cosine search")
    return (matrix / norms).astype(np.float32)

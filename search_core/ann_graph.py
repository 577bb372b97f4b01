"""The approximate-search graph of the local index, on its own: FAISS HNSW over a reduced
projection of the vectors, re-ranked exactly, saved beside the database.

Why a separate module: the graph knows nothing about SQLite or names; it maps positions of a
matrix to neighbours. :class:`search_core.local_index.LocalIndex` decides when to build, extend,
save or drop it (the key ties a saved graph to one database state).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

#: the graph proposes max(RERANK_MIN, RERANK_FACTOR * k) candidates, re-ranked exactly
RERANK_MIN = 200
RERANK_FACTOR = 4


class AnnGraph:
    """FAISS HNSW over a reduced projection of the vectors, re-ranked exactly.

    Why the projection: an HNSW build does hundreds of distance computations per insert, and at
    the embedders' 1024-1280 dimensions a million-vector build takes close to an hour on two
    cores. Projecting onto the top principal directions (uncentred, so inner products are
    preserved as well as possible) makes the build and the walk ~5x cheaper; the graph then
    only proposes candidates, and their true cosine is computed from the full float32 matrix.
    The measured recall@10 against exact search is in docs/benchmarks.md (bench/ann.py).
    """

    def __init__(
        self, index: Any, projection: np.ndarray | None, key: dict[str, Any], last_row: int
    ) -> None:
        self.index = index
        self.projection = projection
        self.key = key
        self.last_row = last_row

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def _project(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self.projection is None:
            return vectors
        return np.ascontiguousarray(vectors @ self.projection)

    @classmethod
    def build(
        cls,
        matrix: np.ndarray,
        rows: np.ndarray,
        key: dict[str, Any],
        *,
        m: int = 32,
        ef_construction: int = 64,
        max_dim: int = 256,
        sample: int = 50_000,
    ) -> AnnGraph:
        import faiss

        projection = None
        if matrix.shape[1] > max_dim:
            rng = np.random.default_rng(0)
            chosen = rng.choice(len(matrix), min(len(matrix), sample), replace=False)
            part = matrix[np.sort(chosen)].astype(np.float64)
            _, vectors = np.linalg.eigh(part.T @ part)  # ascending eigenvalues
            projection = np.ascontiguousarray(vectors[:, ::-1][:, :max_dim], dtype=np.float32)
        dim = matrix.shape[1] if projection is None else max_dim
        index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        graph = cls(index, projection, key, int(rows[-1]) if len(rows) else 0)
        graph.add(matrix, graph.last_row)
        return graph

    def add(self, vectors: np.ndarray, last_row: int) -> None:
        for start in range(0, len(vectors), 50_000):  # bounded temporary memory
            self.index.add(self._project(vectors[start : start + 50_000]))
        self.last_row = last_row

    def search(
        self,
        query: np.ndarray,
        k: int,
        matrix: np.ndarray,
        *,
        ef_search: int = 128,
        candidates: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` positions in ``matrix`` and their exact scores."""
        candidates = max(k, candidates or max(RERANK_MIN, RERANK_FACTOR * k))
        self.index.hnsw.efSearch = max(ef_search, candidates)
        _, found = self.index.search(self._project(query.reshape(1, -1)), candidates)
        found = found[0][found[0] >= 0]
        found = found[found < len(matrix)]
        scores = matrix[found] @ query
        k = min(k, len(found))
        if k <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        top = np.argpartition(-scores, k - 1)[:k]
        order = top[np.argsort(-scores[top], kind="stable")]
        return found[order], scores[order]

    def save(self, path: Path) -> None:
        """Atomically (write + rename): a crash leaves the old file or the new one.

        The temp file has a name of its own per writer (two processes finishing at once must
        not write into one file) and is removed when writing fails (a full disk must not keep
        a half-written graph that fills it further); the OSError is re-raised for the caller
        to report."""
        import faiss

        meta = json.dumps({**self.key, "last_row": self.last_row, "ntotal": self.ntotal})
        _remove_orphaned_temps(path)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(tmp, "wb") as handle:
                np.savez(
                    handle,
                    graph=faiss.serialize_index(self.index),
                    meta=np.array(meta),
                    projection=self.projection if self.projection is not None else np.zeros(0),
                )
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    @staticmethod
    def saved_meta(path: Path) -> dict[str, Any] | None:
        """The saved graph's key and extent, reading only that small member of the file."""
        try:
            with np.load(path) as data:
                meta: dict[str, Any] = json.loads(str(data["meta"]))
                return meta
        except (OSError, ValueError, KeyError) as exc:
            if path.exists():
                log.warning("ignoring the saved HNSW graph %s: %s", path, exc)
            return None

    @classmethod
    def load(cls, path: Path, key: dict[str, Any], rows: np.ndarray) -> AnnGraph | None:
        """The saved graph if it still describes a prefix of ``rows``; None otherwise."""
        import faiss

        if not path.exists():
            return None
        try:
            with np.load(path) as data:
                meta = json.loads(str(data["meta"]))
                ntotal = int(meta["ntotal"])
                if (
                    {"uuid": meta.get("uuid"), "generation": meta.get("generation")} != key
                    or ntotal > len(rows)
                    or ntotal == 0
                    or int(rows[ntotal - 1]) != int(meta["last_row"])
                ):
                    return None
                index = faiss.deserialize_index(data["graph"])
                projection = data["projection"] if data["projection"].size else None
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            log.warning("ignoring the saved HNSW graph %s: %s", path, exc)
            return None
        if index.ntotal != ntotal:
            return None
        return cls(index, projection, key, int(meta["last_row"]))


def _remove_orphaned_temps(path: Path) -> None:
    """Temp files of writers that died mid-save (kill -9): their process is gone."""
    for tmp in path.parent.glob(f"{path.name}.*.tmp"):
        try:
            pid = int(tmp.name[len(path.name) + 1 :].split(".")[0])
            os.kill(pid, 0)  # raises when no such process
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                tmp.unlink()
        except (ValueError, PermissionError, OSError):
            continue  # not ours to judge (another user's process, an odd name)


def exact_top_k(
    matrix: np.ndarray, query: np.ndarray, k: int, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    scores = matrix @ query
    if mask is not None:
        scores = np.where(mask, scores, -np.inf)
        k = min(k, int(mask.sum()))
    k = min(k, scores.shape[0])
    if k <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    top = np.argpartition(-scores, k - 1)[:k]
    order = top[np.argsort(-scores[top], kind="stable")]
    return order, scores[order]

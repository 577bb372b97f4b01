"""The embedded vector index: SQLite for durable storage, NumPy / FAISS for search.

Why SQLite: every write is a transaction, so a crash (kill -9, disk full, power loss) can never
leave a half-written index — the next start sees the last committed batch, and the indexer
resumes from there. Vectors live as float32 blobs beside their metadata and are loaded once into
one contiguous matrix. Search is exact cosine (a matrix-vector product) while the index is small
and switches to a FAISS HNSW graph once exact search would get slow. The graph is saved next to
the database (``hnsw.npz``, keyed by the database's identity, its deletion generation and the
last row it covers), so a restart loads it in seconds instead of rebuilding it for minutes.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from search_core.errors import BackendError, ConfigError
from search_core.filters import matches as _matches
from search_core.types import ItemMeta, SearchHit

log = logging.getLogger(__name__)

#: the graph proposes max(RERANK_MIN, RERANK_FACTOR * k) candidates, re-ranked exactly
RERANK_MIN = 200
RERANK_FACTOR = 4

#: deletions shift the positions of rows, so they invalidate any saved graph
_BUMP_GENERATION = (
    "UPDATE info SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE key = 'generation'",
    [()],
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    row INTEGER PRIMARY KEY AUTOINCREMENT,
    sha256 TEXT NOT NULL UNIQUE,
    uri TEXT NOT NULL,
    meta TEXT NOT NULL,
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS items_uri ON items(uri);
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class LocalIndex:
    """A :class:`~search_core.interfaces.VectorIndex` in ``data_dir/index.sqlite3``.

    Thread-safe: the app searches while a background job indexes. Other processes (the CLI
    indexing into the same directory) are noticed through SQLite's ``data_version`` and the
    in-memory matrix is reloaded before the next search.
    """

    name = "local"

    def __init__(
        self,
        data_dir: Path,
        *,
        dimension: int,
        model_id: str,
        hnsw_threshold: int = 20_000,
        hnsw_m: int = 32,
        hnsw_ef_search: int = 128,
        hnsw_ef_construction: int = 64,
        hnsw_dim: int = 256,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.dimension = dimension
        self.model_id = model_id
        self.hnsw_threshold = hnsw_threshold
        self.hnsw_m = hnsw_m
        self.hnsw_ef_search = hnsw_ef_search
        self.hnsw_ef_construction = hnsw_ef_construction
        self.hnsw_dim = hnsw_dim
        self._lock = threading.RLock()
        self._build_lock = threading.Lock()
        self._build_thread: threading.Thread | None = None
        # _buffer grows by doubling; _matrix is a view of its filled rows (appends are O(1)
        # amortised instead of copying the whole matrix per indexing batch)
        self._buffer = np.zeros((0, dimension), dtype=np.float32)
        self._matrix = self._buffer
        self._rows = np.zeros(0, dtype=np.int64)
        self._items: list[ItemMeta] = []
        self._by_sha: dict[str, int] = {}
        self._graph: AnnGraph | None = None
        self._graph_saved = False
        self._loaded_version: int | None = None
        self._conn = self._connect()

    # -- storage -------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.data_dir / "index.sqlite3", check_same_thread=False, timeout=30
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise BackendError(f"cannot open the local index in {self.data_dir}: {exc}") from exc
        stored = dict(conn.execute("SELECT key, value FROM info").fetchall())
        if not stored:
            with conn:
                conn.executemany(
                    "INSERT INTO info(key, value) VALUES (?, ?)",
                    [("model", self.model_id), ("dimension", str(self.dimension))],
                )
        elif stored.get("model") != self.model_id or int(stored["dimension"]) != self.dimension:
            raise ConfigError(
                f"the index in {self.data_dir} was built with {stored.get('model')} "
                f"({stored.get('dimension')}-d) but the embedder is {self.model_id} "
                f"({self.dimension}-d): use another SEARCH_DATA_DIR or reset the index"
            )
        if "uuid" not in stored:  # identity of this database, for the saved graph's key
            with conn:
                conn.executemany(
                    "INSERT OR IGNORE INTO info(key, value) VALUES (?, ?)",
                    [("uuid", uuid.uuid4().hex), ("generation", "0")],
                )
        return conn

    def _data_version(self) -> int:
        return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def _refresh(self) -> None:
        """Reloads the matrix when the database changed (in another process or connection)."""
        version = self._data_version()
        if version == self._loaded_version:
            return
        total = int(self._conn.execute("SELECT COUNT(*) FROM items").fetchone()[0])
        matrix = np.empty((total, self.dimension), dtype=np.float32)
        row_ids = np.empty(total, dtype=np.int64)
        items: list[ItemMeta] = []
        cursor = self._conn.execute("SELECT row, meta, vector FROM items ORDER BY row")
        position = 0
        # fetchmany keeps the peak at one chunk of blobs, not a second copy of every vector
        while chunk := cursor.fetchmany(10_000):
            for row_id, meta, blob in chunk:
                if position == total:  # grew since COUNT: the next refresh picks it up
                    break
                matrix[position] = np.frombuffer(blob, dtype=np.float32)
                row_ids[position] = row_id
                items.append(ItemMeta.from_dict(json.loads(meta)))
                position += 1
        self._buffer = matrix
        self._matrix = matrix[:position]
        self._rows = row_ids[:position]
        self._items = items
        self._by_sha = {item.sha256: position for position, item in enumerate(items)}
        self._loaded_version = version

    def _write(self, statements: list[tuple[str, list[tuple[Any, ...]]]]) -> None:
        try:
            with self._conn:  # one transaction: all or nothing
                for sql, params in statements:
                    self._conn.executemany(sql, params)
        except sqlite3.OperationalError as exc:
            message = str(exc)
            if "full" in message:
                message = "the disk is full; nothing of this batch was written"
            raise BackendError(f"could not save the local index: {message}") from exc
        # Our own commits do not change data_version for this connection: invalidate by hand
        # (add() re-validates after appending to the loaded matrix).
        self._loaded_version = None

    # -- VectorIndex ---------------------------------------------------------------------------

    def add(self, vectors: np.ndarray, items: Sequence[ItemMeta]) -> int:
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(items), -1)
        if len(items) and vectors.shape[1] != self.dimension:
            raise ConfigError(
                f"vector dimension {vectors.shape[1]} does not match the index ({self.dimension})"
            )
        with self._lock:
            known = self.known_hashes(item.sha256 for item in items)
            rows = []
            seen: set[str] = set()
            for vector, item in zip(vectors, items, strict=True):
                if item.sha256 in known or item.sha256 in seen:
                    continue
                seen.add(item.sha256)
                rows.append((item.sha256, item.uri, json.dumps(item.to_dict()), vector.tobytes()))
            if not rows:
                return 0
            current = self._loaded_version is not None and (
                self._loaded_version == self._data_version()
            )
            insert = "INSERT INTO items(sha256, uri, meta, vector) VALUES (?, ?, ?, ?)"
            self._write([(insert, rows)])
            if current:
                self._append_loaded(rows)
            return len(rows)

    def _append_loaded(self, rows: list[tuple[str, str, str, bytes]]) -> None:
        """Keeps the in-memory matrix in step with our own commit instead of reloading it all
        (a search between two indexing batches would otherwise re-read the whole table)."""
        new = np.stack([np.frombuffer(row[3], dtype=np.float32) for row in rows])
        shas = [row[0] for row in rows]
        marks = ",".join("?" * len(shas))
        ids = dict(
            self._conn.execute(
                f"SELECT sha256, row FROM items WHERE sha256 IN ({marks})", shas
            ).fetchall()
        )
        start = len(self._items)
        end = start + len(new)
        if end > len(self._buffer):
            grown = np.empty((max(end, 2 * len(self._buffer), 1024), self.dimension), np.float32)
            grown[:start] = self._matrix
            self._buffer = grown
        self._buffer[start:end] = new
        self._matrix = self._buffer[:end]
        self._rows = np.concatenate([self._rows, np.array([ids[s] for s in shas], np.int64)])
        for offset, row in enumerate(rows):
            item = ItemMeta.from_dict(json.loads(row[2]))
            self._items.append(item)
            self._by_sha[item.sha256] = start + offset
        self._graph_saved = False  # the graph catches up lazily, on the next graph search
        self._loaded_version = self._data_version()

    def known_hashes(self, sha256s: Iterable[str]) -> set[str]:
        wanted = list(set(sha256s))
        found: set[str] = set()
        with self._lock:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                marks = ",".join("?" * len(chunk))
                found.update(
                    row[0]
                    for row in self._conn.execute(
                        f"SELECT sha256 FROM items WHERE sha256 IN ({marks})", chunk
                    )
                )
        return found

    def items(self) -> Iterator[ItemMeta]:
        with self._lock:
            rows = self._conn.execute("SELECT meta FROM items ORDER BY row").fetchall()
        for (meta,) in rows:
            yield ItemMeta.from_dict(json.loads(meta))

    def delete(self, sha256s: Iterable[str]) -> int:
        wanted = [(sha,) for sha in set(sha256s)]
        if not wanted:
            return 0
        with self._lock:
            before = self.count()
            self._write([("DELETE FROM items WHERE sha256 = ?", wanted), _BUMP_GENERATION])
            return before - self.count()

    def reset(self) -> None:
        with self._lock:
            self._write([("DELETE FROM items", [()]), _BUMP_GENERATION])

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM items").fetchone()[0])

    def stats(self) -> dict[str, Any]:
        with self._lock:
            self._refresh()
            return {
                "backend": self.name,
                "count": len(self._items),
                "dimension": self.dimension,
                "model": self.model_id,
                "search": "faiss-hnsw" if len(self._items) > self.hnsw_threshold else "exact",
                "graph": "ready"
                if self._graph is not None and self._graph.ntotal == len(self._items)
                else "none",
            }

    def search(
        self, vector: np.ndarray, k: int, filters: dict[str, Any] | None = None
    ) -> list[SearchHit]:
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        if query.shape[0] != self.dimension:
            raise ConfigError(
                f"query dimension {query.shape[0]} does not match the index ({self.dimension})"
            )
        with self._lock:
            self._refresh()
            total = len(self._items)
            if total == 0 or k <= 0:
                return []
            if filters:
                mask = np.array([_matches(item, filters) for item in self._items], dtype=bool)
                positions, scores = _exact_top_k(self._matrix, query, k, mask)
            elif total > self.hnsw_threshold:
                positions, scores = self._hnsw_search(query, k)
            else:
                positions, scores = _exact_top_k(self._matrix, query, k, None)
            return [
                SearchHit(uri=self._items[p].uri, score=float(s), item=self._items[p])
                for p, s in zip(positions, scores, strict=True)
            ]

    # -- approximate search --------------------------------------------------------------------

    def _hnsw_search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Graph search when the graph is ready; exact search while it is being built in the
        background (a 1M-vector build takes minutes: no user request may wait for it)."""
        graph = self._current_graph()
        if graph is None:
            self._start_background_build()
            return _exact_top_k(self._matrix, query, k, None)
        return graph.search(query, k, self._matrix, ef_search=self.hnsw_ef_search)

    def _graph_key(self) -> dict[str, Any]:
        info = dict(self._conn.execute("SELECT key, value FROM info").fetchall())
        return {"uuid": info.get("uuid", ""), "generation": int(info.get("generation", "0"))}

    def _current_graph(self) -> AnnGraph | None:
        """The in-memory graph if it covers every loaded row (catching up on a few appended
        rows is cheap and done here); None if a (re)build is needed. Caller holds the lock."""
        graph = self._graph
        if graph is None or graph.key != self._graph_key():
            return None
        missing = len(self._items) - graph.ntotal
        if missing < 0:
            return None
        if missing:
            if missing > max(10_000, graph.ntotal // 10):
                return None  # large growth: rebuild (in the background) instead
            graph.add(self._matrix[graph.ntotal :], int(self._rows[-1]))
        return graph

    def _start_background_build(self) -> None:
        if self._build_thread is not None and self._build_thread.is_alive():
            return
        self._build_thread = threading.Thread(
            target=self.build_graph, name="hnsw-build", daemon=True
        )
        self._build_thread.start()

    def build_graph(self) -> bool:
        """Brings the HNSW graph up to date and saves it beside the database (blocking).

        Loads the saved graph when it is still valid (same database, no deletion since) and
        adds only the rows appended after it was saved; otherwise builds it from scratch.
        Returns False when the index is small enough for exact search (nothing to do).
        Called by the indexer at the end of a run, so the app's first search after a
        restart or an ingest does not pay for the build."""
        with self._build_lock:
            with self._lock:
                if self.count() <= self.hnsw_threshold:
                    return False
                self._refresh()
                if self._current_graph() is not None and self._graph_saved:
                    return True
                matrix, rows, key = self._matrix, self._rows.copy(), self._graph_key()
            graph = AnnGraph.load(self._graph_path, key, rows)
            if graph is not None and graph.ntotal < len(rows):
                graph.add(matrix[graph.ntotal :], int(rows[-1]))
            elif graph is None:
                graph = AnnGraph.build(
                    matrix,
                    rows,
                    key,
                    m=self.hnsw_m,
                    ef_construction=self.hnsw_ef_construction,
                    max_dim=self.hnsw_dim,
                )
            graph.save(self._graph_path)
            with self._lock:
                self._graph = graph
                self._graph_saved = True
            return True

    @property
    def _graph_path(self) -> Path:
        return self.data_dir / "hnsw.npz"

    def vector_of(self, sha256: str) -> np.ndarray | None:
        """The stored vector of one item (a copy), or None: "more like this" and the
        near-duplicate check reuse what indexing computed instead of re-embedding."""
        with self._lock:
            self._refresh()
            position = self._by_sha.get(sha256)
            return None if position is None else self._matrix[position].copy()

    def item_of(self, sha256: str) -> ItemMeta | None:
        """One item's metadata by its id (content hash), without reading the whole table."""
        with self._lock:
            self._refresh()
            position = self._by_sha.get(sha256)
            return None if position is None else self._items[position]


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
        """Atomically (write + rename): a crash leaves the old file or the new one."""
        import faiss

        meta = json.dumps({**self.key, "last_row": self.last_row, "ntotal": self.ntotal})
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as handle:
            np.savez(
                handle,
                graph=faiss.serialize_index(self.index),
                meta=np.array(meta),
                projection=self.projection if self.projection is not None else np.zeros(0),
            )
        os.replace(tmp, path)

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


def _exact_top_k(
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

"""The embedded vector index: SQLite for durable storage, NumPy / FAISS for search.

Why SQLite: every write is a transaction, so a crash (kill -9, disk full, power loss) can never
leave a half-written index — the next start sees the last committed batch, and the indexer
resumes from there. Vectors live as float32 blobs beside their metadata and are loaded once into
one contiguous matrix. Search is exact cosine (a matrix-vector product) while the index is small
and switches to a FAISS HNSW graph once exact search would get slow.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from search_core.errors import BackendError, ConfigError
from search_core.types import ItemMeta, SearchHit

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
    ) -> None:
        self.data_dir = Path(data_dir)
        self.dimension = dimension
        self.model_id = model_id
        self.hnsw_threshold = hnsw_threshold
        self.hnsw_m = hnsw_m
        self.hnsw_ef_search = hnsw_ef_search
        self._lock = threading.RLock()
        self._matrix = np.zeros((0, dimension), dtype=np.float32)
        self._items: list[ItemMeta] = []
        self._by_sha: dict[str, int] = {}
        self._hnsw: Any = None
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
        return conn

    def _data_version(self) -> int:
        return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def _refresh(self) -> None:
        """Reloads the matrix when the database changed (in another process or connection)."""
        version = self._data_version()
        if version == self._loaded_version:
            return
        rows = self._conn.execute("SELECT sha256, meta, vector FROM items ORDER BY row").fetchall()
        matrix = np.empty((len(rows), self.dimension), dtype=np.float32)
        items: list[ItemMeta] = []
        for position, (_sha, meta, blob) in enumerate(rows):
            matrix[position] = np.frombuffer(blob, dtype=np.float32)
            items.append(ItemMeta.from_dict(json.loads(meta)))
        self._matrix = matrix
        self._items = items
        self._by_sha = {item.sha256: position for position, item in enumerate(items)}
        self._hnsw = None
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
            self._write([("INSERT INTO items(sha256, uri, meta, vector) VALUES (?, ?, ?, ?)", rows)])
            if current:
                self._append_loaded(rows)
            return len(rows)

    def _append_loaded(self, rows: list[tuple[str, str, str, bytes]]) -> None:
        """Keeps the in-memory matrix in step with our own commit instead of reloading it all
        (a search between two indexing batches would otherwise re-read the whole table)."""
        new = np.stack([np.frombuffer(row[3], dtype=np.float32) for row in rows])
        start = len(self._items)
        self._matrix = np.concatenate([self._matrix, new]) if start else new.copy()
        for offset, row in enumerate(rows):
            item = ItemMeta.from_dict(json.loads(row[2]))
            self._items.append(item)
            self._by_sha[item.sha256] = start + offset
        if self._hnsw is not None:
            self._hnsw.add(new)
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
            self._write([("DELETE FROM items WHERE sha256 = ?", wanted)])
            return before - self.count()

    def reset(self) -> None:
        with self._lock:
            self._write([("DELETE FROM items", [()])])

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
                "path": str(self.data_dir / "index.sqlite3"),
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
        import faiss

        if self._hnsw is None or self._hnsw.ntotal != len(self._items):
            self._hnsw = build_hnsw(self._matrix, m=self.hnsw_m)
        self._hnsw.hnsw.efSearch = max(self.hnsw_ef_search, k)
        scores, positions = self._hnsw.search(query.reshape(1, -1), k)
        keep = positions[0] >= 0
        del faiss
        return positions[0][keep], scores[0][keep]


def build_hnsw(matrix: np.ndarray, *, m: int = 32, ef_construction: int = 100) -> Any:
    """A FAISS HNSW graph on inner product (= cosine for unit vectors)."""
    import faiss

    index = faiss.IndexHNSWFlat(matrix.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    index.add(np.ascontiguousarray(matrix, dtype=np.float32))
    return index


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


def _matches(item: ItemMeta, filters: dict[str, Any]) -> bool:
    data = item.to_dict()
    for key, wanted in filters.items():
        value = data.get(key, item.extra.get(key))
        if isinstance(wanted, (list, tuple, set)):
            if value not in wanted:
                return False
        elif value != wanted:
            return False
    return True

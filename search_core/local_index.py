"""The embedded vector index: SQLite for durable storage, NumPy / FAISS for search.

Why SQLite: every write is a transaction, so a crash (kill -9, disk full, power loss) can never
leave a half-written index — the next start sees the last committed batch, and the indexer
resumes from there. Every write takes the write lock first (``BEGIN IMMEDIATE``), so any number
of processes may index into one data directory: they queue instead of racing a
check-then-insert.

Names and contents are kept apart because a catalogue has both copies and renames: ``contents``
holds one vector per sha256; ``names`` maps each URI to one content, with the file's version
(size, mtime, ctime, inode for folders, ETag for S3). A content lives as long as some name
refers to it (removing a name drops its content in the same transaction only when no other name
has it). Search returns one hit per name; the pipeline collapses copies of one content.

Vectors are loaded once into one contiguous matrix (one row per name). Search is exact cosine
while the index is small and switches to a FAISS HNSW graph (:mod:`search_core.ann_graph`)
once exact search would get slow. The graph is saved next to the database (``hnsw.npz``, keyed
by the database's identity, its deletion generation and the last row it covers), so a restart
loads it in seconds instead of rebuilding it for minutes.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from search_core.ann_graph import RERANK_FACTOR, RERANK_MIN, AnnGraph, exact_top_k
from search_core.errors import BackendError, ModelMismatchError
from search_core.filters import matches as _matches
from search_core.types import ItemMeta, SearchHit
from search_core.vector_check import check_query, check_vectors

__all__ = ["RERANK_FACTOR", "RERANK_MIN", "SCHEMA_VERSION", "AnnGraph", "LocalIndex"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
#: how long opening the database may wait for other processes (SQLite busy timeout, and the
#: retries of a lock upgrade SQLite refuses to wait for)
OPEN_TIMEOUT_S = 60.0
_CHUNK = 500  # host parameters per IN (...) list, well under SQLite's limit

_SCHEMA = """
CREATE TABLE IF NOT EXISTS contents (
    sha256 TEXT PRIMARY KEY,
    vector BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS names (
    row INTEGER PRIMARY KEY AUTOINCREMENT,
    uri TEXT NOT NULL UNIQUE,
    sha256 TEXT NOT NULL REFERENCES contents(sha256),
    meta TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS names_sha256 ON names(sha256);
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

#: read-only view in the v1 shape, for scripts (and tests) that query ``items`` directly
_ITEMS_VIEW = """
CREATE VIEW IF NOT EXISTS items AS
    SELECT names.row AS row, names.sha256 AS sha256, names.uri AS uri, names.meta AS meta,
           contents.vector AS vector
    FROM names JOIN contents ON contents.sha256 = names.sha256;
"""

#: deletions shift the positions of rows, so they invalidate any saved graph
_BUMP_GENERATION = (
    "UPDATE info SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) WHERE key = 'generation'"
)
_LOAD = (
    "SELECT names.row, names.meta, contents.vector FROM names "
    "JOIN contents ON contents.sha256 = names.sha256"
)


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
        self._graph: AnnGraph | None = None
        self._graph_saved = False
        self._loaded_version: int | None = None
        self._conn = self._connect()

    # -- storage -------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        """Opens (creating or migrating) the database. Two processes opening a brand-new
        database at once can get "database is locked" at once, without the busy timeout: the
        switch to WAL needs an exclusive lock, and SQLite refuses a lock upgrade that could
        deadlock instead of waiting. That is retried, with the busy timeout as the limit."""
        deadline = time.monotonic() + OPEN_TIMEOUT_S
        pause = 0.02
        while True:
            try:
                return self._open()
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                    raise BackendError(
                        f"cannot open the local index in {self.data_dir}: {exc}"
                    ) from exc
                time.sleep(pause)
                pause = min(pause * 2, 1.0)
            except (sqlite3.Error, OSError) as exc:
                raise BackendError(
                    f"cannot open the local index in {self.data_dir}: {exc}"
                ) from exc

    def _open(self) -> sqlite3.Connection:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: transactions are ours (BEGIN IMMEDIATE), never implicit
        conn = sqlite3.connect(
            self.data_dir / "index.sqlite3",
            check_same_thread=False,
            timeout=OPEN_TIMEOUT_S,
            isolation_level=None,
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._migrate(conn)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except BaseException:
            conn.close()
            raise
        stored = dict(conn.execute("SELECT key, value FROM info").fetchall())
        mismatch = (
            stored.get("model") != self.model_id or int(stored["dimension"]) != self.dimension
        )
        if mismatch and not self._adopt_if_empty(conn):
            conn.close()
            raise ModelMismatchError(
                f"the index in {self.data_dir} was built with {stored.get('model')} "
                f"({stored.get('dimension')}-d) but the embedder is {self.model_id} "
                f"({self.dimension}-d): use another SEARCH_DATA_DIR or empty this one "
                "with `python -m search_core reset --yes`"
            )
        return conn

    def _adopt_if_empty(self, conn: sqlite3.Connection) -> bool:
        """An empty index takes the current embedder's model: after SEARCH_EMBEDDER changed
        and the index was reset, nothing of the old model is left to protect."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            empty = not conn.execute("SELECT 1 FROM names LIMIT 1").fetchone() and not (
                conn.execute("SELECT 1 FROM contents LIMIT 1").fetchone()
            )
            if empty:
                conn.executemany(
                    "UPDATE info SET value = ? WHERE key = ?",
                    [(self.model_id, "model"), (str(self.dimension), "dimension")],
                )
                conn.execute(_BUMP_GENERATION)  # a saved graph of the old vectors is void
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if empty:
            log.info("the empty index in %s now holds %s vectors", self.data_dir, self.model_id)
        return empty

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Creates the schema, or upgrades a v1 database (one ``items`` table keyed by sha256
        with one uri) in place: row ids are kept, so a saved graph stays valid. Runs inside the
        opening transaction, so two processes opening an old database migrate it once."""
        kinds = dict(conn.execute("SELECT name, type FROM sqlite_master").fetchall())
        # one statement at a time: executescript would COMMIT the opening transaction
        for statement in filter(str.strip, _SCHEMA.split(";")):
            conn.execute(statement)
        if kinds.get("items") == "table":
            log.info("upgrading the local index in %s to schema %d", self.data_dir, SCHEMA_VERSION)
            conn.execute(
                "INSERT INTO contents(sha256, vector) SELECT sha256, vector FROM items "
                "WHERE true ON CONFLICT(sha256) DO NOTHING"
            )
            # v1 could hold one uri twice (old and new content): the newest row wins
            conn.execute(
                "INSERT INTO names(row, uri, sha256, meta) SELECT row, uri, sha256, meta "
                "FROM items ORDER BY row DESC ON CONFLICT(uri) DO NOTHING"
            )
            kept = conn.execute("SELECT COUNT(*) FROM names").fetchone()[0]
            if kept != conn.execute("SELECT COUNT(*) FROM items").fetchone()[0]:
                conn.execute(_BUMP_GENERATION)  # rows went: a saved graph no longer fits
            conn.execute("DROP TABLE items")
        conn.execute(_ITEMS_VIEW.strip().rstrip(";"))
        defaults = {
            "model": self.model_id,
            "dimension": str(self.dimension),
            "uuid": uuid.uuid4().hex,  # identity of this database, for the saved graph's key
            "generation": "0",
        }
        conn.executemany(
            "INSERT INTO info(key, value) VALUES (?, ?) ON CONFLICT(key) DO NOTHING",
            list(defaults.items()),
        )
        conn.execute(
            "INSERT INTO info(key, value) VALUES ('schema', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (str(SCHEMA_VERSION),),
        )

    def _data_version(self) -> int:
        return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    def _refresh(self) -> None:
        """Reloads the matrix when the database changed (in another process or connection)."""
        version = self._data_version()
        if version == self._loaded_version:
            return
        total = int(self._conn.execute("SELECT COUNT(*) FROM names").fetchone()[0])
        self._buffer = np.empty((total, self.dimension), dtype=np.float32)
        self._matrix = self._buffer[:0]
        self._rows = np.zeros(0, dtype=np.int64)
        self._items = []
        self._load_rows(self._conn.execute(_LOAD + " ORDER BY names.row"))
        self._loaded_version = version

    def _load_rows(self, cursor: sqlite3.Cursor) -> None:
        """Appends rows (row, meta, vector) to the loaded matrix. fetchmany keeps the peak at
        one chunk of blobs, not a second copy of every vector."""
        start = len(self._items)
        rows: list[int] = []
        while chunk := cursor.fetchmany(10_000):
            end = start + len(rows) + len(chunk)
            if end > len(self._buffer):
                grown = np.empty(
                    (max(end, 2 * len(self._buffer), 1024), self.dimension), np.float32
                )
                grown[: start + len(rows)] = self._buffer[: start + len(rows)]
                self._buffer = grown
            for row_id, meta, blob in chunk:
                self._buffer[start + len(rows)] = np.frombuffer(blob, dtype=np.float32)
                rows.append(int(row_id))
                self._items.append(ItemMeta.from_dict(json.loads(meta)))
        self._matrix = self._buffer[: start + len(rows)]
        self._rows = np.concatenate([self._rows, np.array(rows, dtype=np.int64)])

    def _transaction(self, work: Any) -> Any:
        """Runs ``work(conn)`` in one write transaction (all or nothing) taken with the write
        lock (BEGIN IMMEDIATE: other writers wait up to the busy timeout instead of failing
        when they upgrade a read to a write), then keeps the loaded matrix in step."""
        with self._lock:
            current = self._loaded_version is not None and (
                self._loaded_version == self._data_version()
            )
            last_row = int(self._rows[-1]) if len(self._rows) else 0
            state = {"appended_only": True}
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    result = work(self._conn, state)
                    self._conn.execute("COMMIT")
                except BaseException:
                    if self._conn.in_transaction:
                        self._conn.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                message = str(exc)
                if "full" in message:
                    message = "the disk is full; nothing of this batch was written"
                raise BackendError(f"could not save the local index: {message}") from exc
            if current and state["appended_only"]:
                # A search between two indexing batches must not re-read the whole table:
                # append our new rows (and any other writer's, see the version check below).
                version = self._data_version()
                if version == self._loaded_version:
                    self._load_rows(
                        self._conn.execute(
                            _LOAD + " WHERE names.row > ? ORDER BY names.row", (last_row,)
                        )
                    )
                    self._graph_saved = False  # the graph catches up lazily
                    return result
            # Our own commits do not change data_version for this connection: invalidate.
            self._loaded_version = None
            return result

    @staticmethod
    def _put_name(conn: sqlite3.Connection, item: ItemMeta, state: dict[str, bool]) -> str:
        """Points ``item.uri`` at ``item.sha256`` (whose content must exist). Returns "new",
        "same" (metadata refreshed) or "moved" (the name had another content, dropped if no
        other name has it)."""
        meta = json.dumps(item.to_dict())
        old = conn.execute("SELECT row, sha256 FROM names WHERE uri = ?", (item.uri,)).fetchone()
        if old is not None and old[1] == item.sha256:
            conn.execute("UPDATE names SET meta = ? WHERE row = ?", (meta, old[0]))
            state["appended_only"] = False
            return "same"
        if old is not None:
            # A new row (not an update in place): the graph maps positions to vectors. The
            # old content stays until finalize(): in a swap, the other file is about to take
            # it (dropping it now would mean embedding it again a moment later).
            conn.execute("DELETE FROM names WHERE row = ?", (old[0],))
            conn.execute(_BUMP_GENERATION)
            state["appended_only"] = False
        conn.execute(
            "INSERT INTO names(uri, sha256, meta) VALUES (?, ?, ?)", (item.uri, item.sha256, meta)
        )
        return "new" if old is None else "moved"

    @staticmethod
    def _drop_orphans(conn: sqlite3.Connection, sha256s: Sequence[str]) -> int:
        removed = 0
        for start in range(0, len(sha256s), _CHUNK):
            chunk = list(sha256s[start : start + _CHUNK])
            marks = ",".join("?" * len(chunk))
            removed += conn.execute(
                f"DELETE FROM contents WHERE sha256 IN ({marks}) AND NOT EXISTS "
                "(SELECT 1 FROM names WHERE names.sha256 = contents.sha256)",
                chunk,
            ).rowcount
        return removed

    # -- VectorIndex ---------------------------------------------------------------------------

    def add(self, vectors: np.ndarray, items: Sequence[ItemMeta]) -> int:
        """Stores each item's content (unless present) and points its name at it. Returns how
        many contents were new: a content another writer stored first is not counted, which
        lets the indexer report work done by a concurrent run truthfully."""
        matrix = check_vectors(vectors, len(items), self.dimension)
        if not len(items):
            return 0

        latest = {item.uri: item for item in items}  # one name twice: the last one wins

        def work(conn: sqlite3.Connection, state: dict[str, bool]) -> int:
            before = conn.total_changes
            conn.executemany(
                "INSERT INTO contents(sha256, vector) VALUES (?, ?) "
                "ON CONFLICT(sha256) DO NOTHING",
                [(item.sha256, row.tobytes()) for row, item in zip(matrix, items, strict=True)],
            )
            added = conn.total_changes - before
            # names not stored yet in one statement (the common case: a fresh ingest); names
            # that exist go through _put_name (same content: refresh; other content: move)
            uris = list(latest)
            stored: set[str] = set()
            for start in range(0, len(uris), _CHUNK):
                chunk = uris[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                stored.update(
                    row[0]
                    for row in conn.execute(f"SELECT uri FROM names WHERE uri IN ({marks})", chunk)
                )
            conn.executemany(
                "INSERT INTO names(uri, sha256, meta) VALUES (?, ?, ?)",
                [
                    (item.uri, item.sha256, json.dumps(item.to_dict()))
                    for item in latest.values()
                    if item.uri not in stored
                ],
            )
            for item in latest.values():
                if item.uri in stored:
                    self._put_name(conn, item, state)
            return added

        return int(self._transaction(work))

    def link(self, items: Sequence[ItemMeta]) -> list[ItemMeta]:
        """Points names at contents already stored (a copy, a rename, a touched file) without
        a vector. Returns the items whose content is not stored (removed meanwhile by another
        writer): the caller embeds those and calls :meth:`add`."""
        if not items:
            return []

        def work(conn: sqlite3.Connection, state: dict[str, bool]) -> list[ItemMeta]:
            missing: list[ItemMeta] = []
            for item in items:
                present = conn.execute(
                    "SELECT 1 FROM contents WHERE sha256 = ?", (item.sha256,)
                ).fetchone()
                if present is None:
                    missing.append(item)
                else:
                    self._put_name(conn, item, state)
            return missing

        result: list[ItemMeta] = self._transaction(work)
        return result

    def remove(self, uris: Iterable[str]) -> int:
        """Removes names; a content goes with its last name. Returns how many names went."""
        wanted = sorted(set(uris))
        if not wanted:
            return 0

        def work(conn: sqlite3.Connection, state: dict[str, bool]) -> int:
            removed = 0
            shas: list[str] = []
            for start in range(0, len(wanted), _CHUNK):
                chunk = wanted[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                shas += [
                    row[0]
                    for row in conn.execute(
                        f"SELECT sha256 FROM names WHERE uri IN ({marks})", chunk
                    )
                ]
                removed += conn.execute(f"DELETE FROM names WHERE uri IN ({marks})", chunk).rowcount
            if removed:
                self._drop_orphans(conn, sorted(set(shas)))
                conn.execute(_BUMP_GENERATION)
                state["appended_only"] = False
            return removed

        return int(self._transaction(work))

    def known_hashes(self, sha256s: Iterable[str]) -> set[str]:
        wanted = list(set(sha256s))
        found: set[str] = set()
        with self._lock:
            for start in range(0, len(wanted), _CHUNK):
                chunk = wanted[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                found.update(
                    row[0]
                    for row in self._conn.execute(
                        f"SELECT sha256 FROM contents WHERE sha256 IN ({marks})", chunk
                    )
                )
        return found

    def items(self) -> Iterator[ItemMeta]:
        """One item per name, in insertion order."""
        with self._lock:
            rows = self._conn.execute("SELECT meta FROM names ORDER BY row").fetchall()
        for (meta,) in rows:
            yield ItemMeta.from_dict(json.loads(meta))

    def vectors(self) -> tuple[np.ndarray, list[ItemMeta]]:
        """Every stored vector (one row per name, unit length, float32) with its ItemMeta, in
        the same order: for consumers that learn from the whole catalogue (a projection
        trained on the stored vectors and their labels). The matrix is a copy: it stays
        valid while indexing goes on."""
        with self._lock:
            self._refresh()
            return self._matrix.copy(), list(self._items)

    def delete(self, sha256s: Iterable[str]) -> int:
        """Removes contents and every name that has them; returns how many contents went."""
        wanted = sorted(set(sha256s))
        if not wanted:
            return 0

        def work(conn: sqlite3.Connection, state: dict[str, bool]) -> int:
            removed = 0
            for start in range(0, len(wanted), _CHUNK):
                chunk = wanted[start : start + _CHUNK]
                marks = ",".join("?" * len(chunk))
                conn.execute(f"DELETE FROM names WHERE sha256 IN ({marks})", chunk)
                removed += conn.execute(
                    f"DELETE FROM contents WHERE sha256 IN ({marks})", chunk
                ).rowcount
            if removed:
                conn.execute(_BUMP_GENERATION)
                state["appended_only"] = False
            return removed

        return int(self._transaction(work))

    @staticmethod
    def wipe(data_dir: Path) -> int:
        """Empties the index in ``data_dir`` whatever embedder built it, without opening it as
        an index (which refuses another model): the way out after SEARCH_EMBEDDER changed.
        The next open adopts the current model. Returns the names removed."""
        path = Path(data_dir) / "index.sqlite3"
        if not path.is_file():
            return 0
        conn = sqlite3.connect(path, timeout=OPEN_TIMEOUT_S, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                removed = int(conn.execute("SELECT COUNT(*) FROM names").fetchone()[0])
                conn.execute("DELETE FROM names")
                conn.execute("DELETE FROM contents")
                conn.execute(_BUMP_GENERATION)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise BackendError(f"cannot empty the local index in {data_dir}: {exc}") from exc
        finally:
            conn.close()
        return removed

    def reset(self) -> None:
        def work(conn: sqlite3.Connection, state: dict[str, bool]) -> None:
            conn.execute("DELETE FROM names")
            conn.execute("DELETE FROM contents")
            conn.execute(_BUMP_GENERATION)
            state["appended_only"] = False

        self._transaction(work)

    def count(self) -> int:
        """Names (files) in the index; :meth:`stats` also reports distinct contents."""
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM names").fetchone()[0])

    def stats(self) -> dict[str, Any]:
        with self._lock:
            self._refresh()
            contents = int(self._conn.execute("SELECT COUNT(*) FROM contents").fetchone()[0])
            return {
                "backend": self.name,
                "count": len(self._items),
                "contents": contents,
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
        """Top ``k`` names by cosine (copies of one content are separate hits)."""
        query = check_query(vector, self.dimension)
        with self._lock:
            self._refresh()
            total = len(self._items)
            if total == 0 or k <= 0:
                return []
            if filters:
                mask = np.array([_matches(item, filters) for item in self._items], dtype=bool)
                positions, scores = exact_top_k(self._matrix, query, k, mask)
            elif total > self.hnsw_threshold:
                positions, scores = self._hnsw_search(query, k)
            else:
                positions, scores = exact_top_k(self._matrix, query, k, None)
            return [
                SearchHit(uri=self._items[p].uri, score=float(s), item=self._items[p])
                for p, s in zip(positions, scores, strict=True)
            ]

    def finalize(self) -> None:
        """End of an indexing run: drops contents no name refers to any more (names moved to
        other content during the run), then builds (or loads and extends) and saves the HNSW
        graph when the index is large enough for it, so the app's first search after a
        restart or an ingest does not pay for the build. Raises BackendError (temp file
        removed) when the graph cannot be saved; a rerun builds it again."""

        def drop_orphans(conn: sqlite3.Connection, state: dict[str, bool]) -> int:
            return int(
                conn.execute(
                    "DELETE FROM contents WHERE NOT EXISTS "
                    "(SELECT 1 FROM names WHERE names.sha256 = contents.sha256)"
                ).rowcount
            )

        self._transaction(drop_orphans)  # names are untouched: the loaded matrix stays valid
        if self._graph_up_to_date_on_disk():
            return
        self.build_graph()

    def _graph_up_to_date_on_disk(self) -> bool:
        """True when the saved graph covers exactly the current rows (read from its small
        metadata member only): a run that changed nothing does not load a large graph."""
        with self._lock:
            if self.count() <= self.hnsw_threshold:
                return False
            self._refresh()
            if self._current_graph() is not None and self._graph_saved:
                return True
            rows, key = self._rows, self._graph_key()
        meta = AnnGraph.saved_meta(self._graph_path)
        return bool(
            meta is not None
            and len(rows)
            and {"uuid": meta.get("uuid"), "generation": meta.get("generation")} == key
            and int(meta.get("ntotal", -1)) == len(rows)
            and int(meta.get("last_row", -1)) == int(rows[-1])
        )

    # -- approximate search --------------------------------------------------------------------

    def _hnsw_search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Graph search when the graph is ready; exact search while it is being built in the
        background (a 1M-vector build takes minutes: no user request may wait for it)."""
        graph = self._current_graph()
        if graph is None:
            self._start_background_build()
            return exact_top_k(self._matrix, query, k, None)
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
            target=self._build_in_background, name="hnsw-build", daemon=True
        )
        self._build_thread.start()

    def _build_in_background(self) -> None:
        try:
            self.build_graph()
        except BackendError as exc:  # searches go on exactly; the next run retries
            log.warning("%s", exc)

    def build_graph(self) -> bool:
        """Makes the HNSW graph current and saved: loads the saved graph when it still matches
        (same database, no deletion since) and adds only the rows appended after it was saved;
        otherwise builds it from scratch. Returns False when the index is small enough for
        exact search (nothing to do)."""
        with self._build_lock:
            with self._lock:
                if self.count() <= self.hnsw_threshold:
                    return False
                self._refresh()
                if self._current_graph() is not None and self._graph_saved:
                    return True
                matrix, rows, key = self._matrix, self._rows.copy(), self._graph_key()
            graph = AnnGraph.load(self._graph_path, key, rows)
            complete = graph is not None and graph.ntotal == len(rows)
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
            if not complete:
                try:
                    graph.save(self._graph_path)
                except OSError as exc:
                    reason = "the disk is full" if exc.errno == 28 else (exc.strerror or str(exc))
                    raise BackendError(
                        f"could not save the search graph in {self.data_dir}: {reason}; "
                        "every image is indexed (searches stay exact until the graph is saved)"
                    ) from exc
            with self._lock:
                self._graph = graph
                self._graph_saved = True
            return True

    @property
    def _graph_path(self) -> Path:
        return self.data_dir / "hnsw.npz"

    def holds(self, uri: str) -> bool:
        """Whether ``uri`` is a stored name (one indexed lookup in ``names``)."""
        with self._lock:
            return self._conn.execute(
                "SELECT 1 FROM names WHERE uri = ? LIMIT 1", (uri,)
            ).fetchone() is not None

    def vector_of(self, sha256: str) -> np.ndarray | None:
        """The stored vector of one content, or None: "more like this" and the near-duplicate
        check reuse what indexing computed instead of re-embedding."""
        with self._lock:
            row = self._conn.execute(
                "SELECT vector FROM contents WHERE sha256 = ?", (sha256,)
            ).fetchone()
        return None if row is None else np.frombuffer(row[0], dtype=np.float32).copy()

    def item_of(self, sha256: str) -> ItemMeta | None:
        """The first name's metadata of one content (its id), without loading the table."""
        with self._lock:
            row = self._conn.execute(
                "SELECT meta FROM names WHERE sha256 = ? ORDER BY row LIMIT 1", (sha256,)
            ).fetchone()
        return None if row is None else ItemMeta.from_dict(json.loads(row[0]))

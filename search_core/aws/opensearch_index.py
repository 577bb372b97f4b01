"""OpenSearch (Serverless, managed domain or self-hosted) as a
:class:`~search_core.interfaces.VectorIndex`, through ``opensearch-py``.

Why it looks like this:
- Auth: SigV4 with the boto3 session's *refreshable* credentials (the signer asks for frozen
  credentials on every request, so role/SSO credentials renew themselves), service ``aoss`` for
  Serverless and ``es`` for managed domains; basic auth or none for self-hosted. With
  ``RequestsAWSV4SignerAuth`` the connection class must be ``RequestsHttpConnection``.
- The index is created by code with an explicit mapping (knn_vector of the embedder's dimension,
  HNSW / faiss / innerproduct -- vectors are unit length, so inner product is cosine), never by
  hand in the console.
- Serverless vector collections reject custom document ids and ``refresh``: there we never send
  them and deduplicate by the ``sha256`` field (terms query before writing, plus the hashes
  written by this process, because new documents become searchable only after up to ~60 s).
  Elsewhere ``_id = sha256`` makes writes idempotent.
- Scores: for faiss innerproduct OpenSearch reports ``1 + ip`` when ``ip >= 0`` and
  ``1 / (1 - ip)`` otherwise (k-NN plugin ``SpaceType.INNER_PRODUCT.scoreTranslation`` with
  faiss' negated inner product); :func:`cosine_from_score` inverts it.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from botocore.exceptions import BotoCoreError, ClientError
from opensearchpy import OpenSearch, helpers
from opensearchpy import exceptions as os_exc

from search_core.aws.clients import translate_error
from search_core.aws.opensearch_client import AUTH_MODES, build_client, region_of, resolve_auth
from search_core.config import Settings
from search_core.errors import BackendError, ConfigError, SearchError
from search_core.types import ItemMeta, SearchHit
from search_core.vector_check import check_query, check_vectors

__all__ = [
    "AUTH_MODES",
    "OpenSearchIndex",
    "build_client",
    "cosine_from_score",
    "index_body",
    "region_of",
    "resolve_auth",
    "score_from_cosine",
]

VECTOR_FIELD = "vector"
KEYWORD_FIELDS = ("uri", "sha256", "label", "model", "key", "category", "tags")
#: paging order of scans: ``key`` is unique per document, so no two documents tie and no
#: copy is skipped at a page boundary (indexes made before ``key`` existed sort it as missing)
SCAN_SORT: list[dict[str, Any]] = [
    {"uri": "asc"},
    {"sha256": "asc"},
    {"key": {"order": "asc", "unmapped_type": "keyword"}},
]
DELETE_ROUNDS = 5
INTEGER_FIELDS = ("dimension", "width", "height")
BULK_DOCS = 200
BULK_BYTES = 5 * 1024 * 1024
TERMS_CHUNK = 500
PAGE = 500
READY_TIMEOUT_S = 90.0
#: stored vectors kept in memory (content-addressed, so never stale): ~5 MB at 1280 floats
VECTOR_CACHE = 1024
#: vectors fetched in one terms query when a result's vector is asked for (near-duplicate
#: folding walks a result list in order: one request serves the next results too)
LOOKUP_BATCH = 64
#: result lists remembered for that batching (one per recent search)
RECENT_RESULTS = 16
#: items whose mean vector ranks a keyword search (an estimate of "typical" needs no more)
KEYWORD_SAMPLE = 500
EVENTUAL_CONSISTENCY_NOTE = (
    "OpenSearch Serverless makes newly indexed images searchable only after up to about 60 "
    "seconds; recent additions may not appear in results yet."
)


def cosine_from_score(score: float) -> float:
    """Inverts the k-NN plugin's faiss innerproduct score translation (unit vectors -> cosine)."""
    score = float(score)
    if score >= 1.0:
        return min(score - 1.0, 1.0)
    if score <= 0.0:
        return -1.0
    return max(1.0 - 1.0 / score, -1.0)


def score_from_cosine(ip: float) -> float:
    """Forward translation, as OpenSearch computes it (used by the fake server and tests)."""
    return 1.0 + ip if ip >= 0 else 1.0 / (1.0 - ip)


def index_body(dimension: int, m: int, ef_construction: int) -> dict[str, Any]:
    properties: dict[str, Any] = {
        VECTOR_FIELD: {
            "type": "knn_vector",
            "dimension": int(dimension),
            "method": {
                "name": "hnsw",
                "engine": "faiss",
                "space_type": "innerproduct",
                "parameters": {"m": int(m), "ef_construction": int(ef_construction)},
            },
        },
        "size_bytes": {"type": "long"},
        "extra": {"type": "object", "enabled": False},
    }
    properties.update({name: {"type": "keyword"} for name in KEYWORD_FIELDS})
    properties.update({name: {"type": "integer"} for name in INTEGER_FIELDS})
    return {
        "settings": {"index": {"knn": True}},
        "mappings": {"dynamic": False, "properties": properties},
    }


class OpenSearchIndex:
    """``OpenSearchIndex(settings, dimension=..., model_id="", client=None)``.

    ``dimension`` is the embedder's; ``client`` lets tests pass a prepared opensearch-py client.
    The index is created (and awaited) on first use when missing.
    """

    name = "opensearch"

    def __init__(
        self,
        settings: Settings,
        *,
        dimension: int,
        model_id: str = "",
        client: OpenSearch | None = None,
    ) -> None:
        self._settings = settings
        self.dimension = int(dimension)
        self.model_id = model_id
        self.index_name = settings.opensearch_index
        self.auth = resolve_auth(settings)
        self.serverless = self.auth == "sigv4-aoss"
        self._client = client
        self._bulk_client: OpenSearch | None = client
        # re-entrant: an error inside ensure_index/reset (which hold it) may forget the index
        self._lock = threading.RLock()
        self._ready = False
        # Hashes and names written by this process: AOSS search does not see them for ~60 s.
        self._recent: set[str] = set()
        self._recent_names: dict[str, tuple[str, str]] = {}
        # More like this / near-duplicate folding: stored vectors by content, and the content
        # ids of recent results in score order (see vector_of)
        self._vector_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._recent_results: deque[list[str]] = deque(maxlen=RECENT_RESULTS)

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def client(self) -> OpenSearch:
        if self._client is None:
            self._client = build_client(self._settings)
        return self._client

    @property
    def bulk_client(self) -> OpenSearch:
        """The client for ``_bulk`` writes. Serverless takes no document ids, so a bulk resent
        after its answer was lost (timeout, dropped connection, 5xx after the write) would
        store every document again: there the bulk is never resent by the transport; the
        ambiguous failure stops the run and the rerun's sha256 check skips what did land.
        (429s are still retried by the bulk helper: a rejected bulk was not applied.)"""
        if self._bulk_client is None:
            self._bulk_client = (
                build_client(self._settings, resend=False) if self.serverless else self.client
            )
        return self._bulk_client

    def _forget_index(self) -> None:
        """The index is gone (deleted under us): the next call re-creates it, and the hashes
        this process wrote must no longer count as present, or a rerun would skip them."""
        with self._lock:
            self._ready = False
            self._recent.clear()
            self._recent_names.clear()
            self._vector_cache.clear()
            self._recent_results.clear()

    def _error(self, exc: Exception, action: str) -> SearchError:
        if isinstance(exc, os_exc.NotFoundError) and exc.error == "index_not_found_exception":
            self._forget_index()
        endpoint = self._settings.opensearch_endpoint
        where = f"OpenSearch {action} on {self.index_name!r} at {endpoint}"
        if isinstance(exc, SearchError):
            return exc
        if isinstance(exc, ClientError | BotoCoreError):
            return translate_error(exc, service="OpenSearch", action=action,
                                   settings=self._settings)
        if isinstance(exc, os_exc.AuthenticationException):
            return BackendError(f"{where}: authentication failed (401); check the credentials")
        if isinstance(exc, os_exc.AuthorizationException):
            hint = (
                "the data access policy of the collection must grant this identity "
                "(python -m search_core aws setup adds the caller)"
                if self.serverless
                else "the domain's access policy or fine-grained access control denies it"
            )
            return BackendError(f"{where}: access denied (403): {hint}")
        if isinstance(exc, os_exc.ConnectionTimeout):
            return BackendError(f"{where}: timed out; the cluster is slow or unreachable")
        if isinstance(exc, os_exc.ConnectionError):
            return BackendError(f"{where}: cannot connect ({exc.info or exc.error})")
        if isinstance(exc, os_exc.TransportError):
            return BackendError(f"{where} failed ({exc.status_code}): {_reason(exc)}")
        return BackendError(f"{where} failed: {exc}")

    def _call(self, action: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (os_exc.OpenSearchException, ClientError, BotoCoreError) as exc:
            raise self._error(exc, action) from exc

    def ensure_index(self) -> None:
        """Creates the index if missing, checks the dimension if present, waits until usable.
        Two processes may create it at once: the loser's "already exists" answer (recognised
        by its error type, not its wording) means the index is there."""
        if self._ready:
            return
        with self._lock:
            if self._ready:
                return
            exists = self._call("exists", self.client.indices.exists, index=self.index_name)
            if exists:
                self._check_dimension()
            else:
                body = index_body(
                    self.dimension,
                    self._settings.opensearch_hnsw_m,
                    self._settings.opensearch_ef_construction,
                )
                try:
                    self.client.indices.create(index=self.index_name, body=body)
                except os_exc.RequestError as exc:
                    if _error_type(exc) != "resource_already_exists_exception":
                        raise self._error(exc, "create index") from exc
                    self._check_dimension()  # created by the other process: same checks
                except (os_exc.OpenSearchException, ClientError, BotoCoreError) as exc:
                    raise self._error(exc, "create index") from exc
                self._wait_until_ready()
            self._ready = True

    def _check_dimension(self) -> None:
        mapping = self._call("get mapping", self.client.indices.get_mapping, index=self.index_name)
        for data in mapping.values():
            field = data.get("mappings", {}).get("properties", {}).get(VECTOR_FIELD, {})
            found = field.get("dimension")
            if found is not None and int(found) != self.dimension:
                raise ConfigError(
                    f"OpenSearch index {self.index_name!r} holds {found}-dimensional vectors but "
                    f"the embedder makes {self.dimension}: use another OPENSEARCH_INDEX or reset it"
                )

    def _wait_until_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """A new AOSS index can answer 404 for a few seconds after creation."""
        deadline = time.monotonic() + timeout
        delay = 0.2
        while True:
            try:
                self.client.count(index=self.index_name)
                return
            except (os_exc.NotFoundError, os_exc.ConnectionError) as exc:
                if time.monotonic() > deadline:
                    raise self._error(exc, "wait for new index") from exc
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    # -- VectorIndex ------------------------------------------------------------------------
    #
    # One document per name (uri) with its content's sha256 and vector: a copy or a rename is
    # a second document with the same vector (taken from the stored one, never re-embedded);
    # a name that changes content gets a new document and loses the old one.

    def add(self, vectors: np.ndarray, items: Sequence[ItemMeta]) -> int:
        """Writes each item's name with its vector; returns how many contents were new."""
        matrix = check_vectors(vectors, len(items), self.dimension)
        if not len(items):
            return 0
        self.ensure_index()
        known = self.known_hashes(item.sha256 for item in items)
        rows: dict[str, tuple[np.ndarray, ItemMeta]] = {}
        for row, item in zip(matrix, items, strict=True):
            rows[item.uri] = (row, item)  # one document per name; the last one wins
        self._write_names(list(rows.values()))
        return len({item.sha256 for _, item in rows.values()} - known)

    def link(self, items: Sequence[ItemMeta]) -> list[ItemMeta]:
        """Writes names for contents already stored, with the stored vector; returns the items
        whose content is not found."""
        if not items:
            return []
        self.ensure_index()
        vectors = self._stored_vectors({item.sha256 for item in items})
        rows = [(vectors[item.sha256], item) for item in items if item.sha256 in vectors]
        self._write_names(rows)
        return [item for item in items if item.sha256 not in vectors]

    def _stored_vectors(self, sha256s: set[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        wanted = sorted(sha256s)
        for start in range(0, len(wanted), TERMS_CHUNK):
            chunk = wanted[start:start + TERMS_CHUNK]
            query = {"bool": {"filter": [{"terms": {"sha256": chunk}}]}}
            for hit in self._scan(query, ["sha256", VECTOR_FIELD]):
                source = hit.get("_source", {})
                if source.get("sha256") not in found and source.get(VECTOR_FIELD):
                    found[source["sha256"]] = np.asarray(source[VECTOR_FIELD], np.float32)
            if len(found) == len(wanted):
                break
        return found

    def _write_names(self, rows: list[tuple[np.ndarray, ItemMeta]]) -> None:
        """Indexes one new document per name, then deletes the names' older documents (in
        this order, so a name never disappears from search while it is rewritten). A name
        already stored with the same content and version is left alone (a rerun writes
        nothing); so is one this process wrote moments ago (Serverless does not show it yet)."""
        if not rows:
            return
        stored = self._names([item.uri for _, item in rows])
        with self._lock:
            stored.update({uri: [("", *state)] for uri, state in self._recent_names.items()
                           if uri not in stored})
        fresh = [
            (row, item)
            for row, item in rows
            if (item.sha256, str(item.extra.get("version", "")))
            not in {(sha, version) for _, sha, version in stored.get(item.uri, [])}
        ]
        old = [doc_id for _, item in fresh for doc_id, _, _ in stored.get(item.uri, []) if doc_id]
        docs: list[tuple[str, dict[str, Any]]] = []
        for row, item in fresh:
            key = _name_key(item.uri) if not self.serverless else uuid.uuid4().hex
            docs.append((key, _document(row, item, self.model_id, self.dimension, key)))
        if not docs:
            return

        def actions() -> Iterator[dict[str, Any]]:
            for key, doc in docs:
                action: dict[str, Any] = {"_op_type": "index", "_index": self.index_name,
                                          "_source": doc}
                if not self.serverless:
                    action["_id"] = key  # idempotent per name where ids are allowed
                yield action

        outcomes: list[bool] = []
        failures: list[str] = []
        try:
            for ok, info in helpers.streaming_bulk(
                self.bulk_client,
                actions(),
                chunk_size=BULK_DOCS,
                max_chunk_bytes=BULK_BYTES,
                raise_on_error=False,
                max_retries=3,
                initial_backoff=1,
                max_backoff=20,
            ):
                outcomes.append(bool(ok))
                if not ok:
                    failures.append(_item_reason(next(iter(info.values()))))
        except (os_exc.OpenSearchException, ClientError, BotoCoreError) as exc:
            raise self._error(exc, "bulk") from exc
        finally:
            # streaming_bulk yields one result per action, in order.
            with self._lock:
                for (_, doc), ok in zip(docs, outcomes, strict=False):
                    if ok:
                        self._recent.add(doc["sha256"])
                        self._recent_names[doc["uri"]] = (
                            doc["sha256"], str(doc["extra"].get("version", "")))
        written = sum(outcomes)
        if any(reason.startswith("index_not_found_exception") for reason in failures):
            self._forget_index()
        if failures:
            raise BackendError(
                f"OpenSearch refused {len(failures)} of {len(docs)} documents "
                f"(first: {failures[0]}); {written} were written"
            )
        new_ids = {key for key, _ in docs}
        self._delete_ids([doc_id for doc_id in old if doc_id not in new_ids])

    def _names(self, uris: Sequence[str]) -> dict[str, list[tuple[str, str, str]]]:
        """uri -> [(document id, sha256, version)] of the stored documents of these names."""
        wanted = sorted(set(uris))
        found: dict[str, list[tuple[str, str, str]]] = {}
        for start in range(0, len(wanted), TERMS_CHUNK):
            chunk = wanted[start:start + TERMS_CHUNK]
            query = {"bool": {"filter": [{"terms": {"uri": chunk}}]}}
            for hit in self._scan(query, ["uri", "sha256", "extra"]):
                source = hit.get("_source", {})
                version = str((source.get("extra") or {}).get("version", ""))
                found.setdefault(source.get("uri", ""), []).append(
                    (hit["_id"], source.get("sha256", ""), version)
                )
        return found

    def _delete_ids(self, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        actions = (
            {"_op_type": "delete", "_index": self.index_name, "_id": doc_id} for doc_id in ids
        )
        deleted = 0
        try:
            for ok, _info in helpers.streaming_bulk(
                self.client, actions, chunk_size=BULK_DOCS, raise_on_error=False,
                max_retries=3, initial_backoff=1, max_backoff=20,
            ):
                deleted += bool(ok)
        except (os_exc.OpenSearchException, ClientError, BotoCoreError) as exc:
            raise self._error(exc, "bulk delete") from exc
        return deleted

    def _delete_where(self, field: str, values: Sequence[str]) -> set[str]:
        """Deletes every document whose ``field`` is one of ``values``; returns the values
        that had documents. Scans again until a scan finds nothing not yet deleted, so even
        documents without a unique key (older indexes) cannot survive at a page boundary;
        documents already deleted but still visible (Serverless) do not prolong it."""
        wanted = sorted(set(values))
        deleted: set[str] = set()
        matched: set[str] = set()
        for _ in range(DELETE_ROUNDS):
            targets: list[tuple[str, str]] = []
            for start in range(0, len(wanted), TERMS_CHUNK):
                chunk = wanted[start:start + TERMS_CHUNK]
                query = {"bool": {"filter": [{"terms": {field: chunk}}]}}
                targets += [
                    (hit["_id"], hit["_source"][field])
                    for hit in self._scan(query, [field])
                    if hit["_id"] not in deleted
                ]
            if not targets:
                break
            self._delete_ids([doc_id for doc_id, _ in targets])
            deleted.update(doc_id for doc_id, _ in targets)
            matched.update(value for _, value in targets)
        return matched

    def remove(self, uris: Iterable[str]) -> int:
        wanted = sorted({u for u in uris if u})
        if not wanted:
            return 0
        self.ensure_index()
        removed = self._delete_where("uri", wanted)
        # the hashes this process wrote may now have no name left: ask the index again
        with self._lock:
            self._recent.clear()
            self._vector_cache.clear()  # a content may have lost its last name
            for uri in wanted:
                self._recent_names.pop(uri, None)
        return len(removed)

    def finalize(self) -> None:
        """Nothing to do: OpenSearch maintains its own HNSW graphs."""

    def search(
        self, vector: np.ndarray, k: int, filters: dict[str, Any] | None = None
    ) -> list[SearchHit]:
        """Top ``k`` names by cosine (copies of one content are separate hits)."""
        query = check_query(vector, self.dimension)
        k = max(1, int(k))
        fetch = min(max(2 * k, k + 10), 10_000)  # headroom for duplicate documents
        knn: dict[str, Any] = {"vector": query.tolist(), "k": fetch}
        clause = _filter_clause(filters)
        if clause is not None:
            knn["filter"] = clause
        body = {
            "size": fetch,
            "_source": {"excludes": [VECTOR_FIELD]},
            "query": {"knn": {VECTOR_FIELD: knn}},
        }
        self.ensure_index()
        response = self._call("search", self.client.search, index=self.index_name, body=body)
        hits: list[SearchHit] = []
        seen: set[str] = set()
        for hit in response.get("hits", {}).get("hits", []):
            source = hit.get("_source", {})
            item = _item(source)
            if item.uri in seen:
                continue
            seen.add(item.uri)
            hits.append(SearchHit(uri=item.uri, score=cosine_from_score(hit["_score"]), item=item))
            if len(hits) == k:
                break
        self.expect_lookups([hit.item.sha256 for hit in hits])
        return hits

    def known_hashes(self, sha256s: Iterable[str]) -> set[str]:
        wanted = sorted({s for s in sha256s if s})
        if not wanted:
            return set()
        with self._lock:
            found = {s for s in wanted if s in self._recent}
        remaining = [s for s in wanted if s not in found]
        if not remaining:
            return found
        self.ensure_index()
        for start in range(0, len(remaining), TERMS_CHUNK):
            chunk = remaining[start:start + TERMS_CHUNK]
            body = {
                "size": len(chunk) * 2,
                "_source": ["sha256"],
                "query": {"bool": {"filter": [{"terms": {"sha256": chunk}}]}},
            }
            response = self._call("terms query", self.client.search, index=self.index_name,
                                  body=body)
            found.update(h["_source"]["sha256"] for h in response["hits"]["hits"])
        return found

    def _scan(self, query: dict[str, Any], source: Any) -> Iterator[dict[str, Any]]:
        """All matching hits, paged with search_after (scroll is not on AOSS) in
        :data:`SCAN_SORT` order, which has no ties between documents that have a key."""
        after: list[Any] | None = None
        while True:
            body: dict[str, Any] = {
                "size": PAGE,
                "_source": source,
                "query": query,
                "sort": SCAN_SORT,
            }
            if after is not None:
                body["search_after"] = after
            response = self._call("scan", self.client.search, index=self.index_name, body=body)
            page = response.get("hits", {}).get("hits", [])
            yield from page
            if len(page) < PAGE:
                return
            after = page[-1]["sort"]

    def items(self) -> Iterator[ItemMeta]:
        """One item per name."""
        self.ensure_index()
        seen: set[str] = set()
        for hit in self._scan({"match_all": {}}, {"excludes": [VECTOR_FIELD]}):
            item = _item(hit.get("_source", {}))
            if item.uri not in seen:
                seen.add(item.uri)
                yield item

    def delete(self, sha256s: Iterable[str]) -> int:
        """Removes contents with every name that has them; returns how many had documents."""
        wanted = sorted({s for s in sha256s if s})
        if not wanted:
            return 0
        self.ensure_index()
        removed = self._delete_where("sha256", wanted)
        with self._lock:
            self._recent.difference_update(wanted)
            for sha in wanted:
                self._vector_cache.pop(sha, None)
            self._recent_names = {
                uri: state for uri, state in self._recent_names.items() if state[0] not in removed
            }
        return len(removed)

    def reset(self) -> None:
        with self._lock:
            try:
                self.client.indices.delete(index=self.index_name)
            except os_exc.NotFoundError:
                pass
            except (os_exc.OpenSearchException, ClientError, BotoCoreError) as exc:
                raise self._error(exc, "delete index") from exc
            self._ready = False
            self._recent.clear()
            self._recent_names.clear()
            self._vector_cache.clear()
            self._recent_results.clear()
        self.ensure_index()

    def count(self) -> int:
        self.ensure_index()
        response = self._call("count", self.client.count, index=self.index_name)
        return int(response.get("count", 0))

    def stats(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "count": self.count(),
            "dimension": self.dimension,
            "index": self.index_name,
            "endpoint": self._settings.opensearch_endpoint,
            "auth": self.auth,
            "serverless": self.serverless,
            "engine": "faiss hnsw innerproduct",
            "eventual_consistency_note": EVENTUAL_CONSISTENCY_NOTE if self.serverless else "",
        }

    def vectors(self) -> tuple[np.ndarray, list[ItemMeta]]:
        """Every stored vector with its item (one scan, PAGE documents per request): the
        catalogue adaptation fits on them and searches a projected copy in memory."""
        self.ensure_index()
        rows: list[list[float]] = []
        items: list[ItemMeta] = []
        seen: set[str] = set()
        for hit in self._scan({"match_all": {}}, True):
            source = hit.get("_source", {})
            item = _item(source)
            if item.sha256 in seen or VECTOR_FIELD not in source:
                continue
            seen.add(item.sha256)
            rows.append(source[VECTOR_FIELD])
            items.append(item)
        matrix = np.asarray(rows, dtype=np.float32).reshape(len(rows), self.dimension)
        return matrix, items

    # -- lookups by content id (LooksUpVectors, LooksUpItems, SelectsVectors) -----------------

    def expect_lookups(self, sha256s: Sequence[str]) -> None:
        """Remembers a result list (best first) whose vectors may be asked for next: its own
        search results, or a list from elsewhere (the catalogue adaptation's in-memory
        search) that the pipeline announces before folding near-duplicates."""
        with self._lock:
            self._recent_results.append(list(sha256s))

    def vector_of(self, sha256: str) -> np.ndarray | None:
        """The stored vector of one content, or None ("more like this", near-duplicate
        folding). Folding asks for the results' vectors one by one, in score order: a miss
        fetches this one and the next uncached ones of the same recent result list in one
        terms query (so a result list costs one or two requests, not one per result), and
        vectors stay cached -- a content's vector never changes."""
        if not sha256:
            return None
        with self._lock:
            cached = self._vector_cache.get(sha256)
            if cached is not None:
                self._vector_cache.move_to_end(sha256)
                return cached
            batch = [sha256]
            for results in reversed(self._recent_results):
                if sha256 in results:
                    after = results[results.index(sha256) + 1:]
                    batch += [s for s in after if s not in self._vector_cache][:LOOKUP_BATCH - 1]
                    break
        self.ensure_index()
        found = self._stored_vectors(set(batch))
        with self._lock:
            for sha, vector in found.items():
                vector.setflags(write=False)  # shared by every caller through the cache
                self._vector_cache[sha] = vector
                self._vector_cache.move_to_end(sha)
            while len(self._vector_cache) > VECTOR_CACHE:
                self._vector_cache.popitem(last=False)
        return found.get(sha256)

    def item_of(self, sha256: str) -> ItemMeta | None:
        """The first name (in URI order) of one content, by a term query on ``sha256``."""
        if not sha256:
            return None
        self.ensure_index()
        body = {"size": 1, "_source": {"excludes": [VECTOR_FIELD]}, "sort": SCAN_SORT,
                "query": {"bool": {"filter": [{"term": {"sha256": sha256}}]}}}
        response = self._call("term query", self.client.search, index=self.index_name, body=body)
        hits = response.get("hits", {}).get("hits", [])
        return _item(hits[0].get("_source", {})) if hits else None

    def vectors_where(
        self, filters: dict[str, Any], limit: int = KEYWORD_SAMPLE
    ) -> tuple[np.ndarray, list[ItemMeta]]:
        """Stored vectors (one per content, at most ``limit``) of the items passing
        ``filters`` (a keyword search by tags: a terms query on ``tags``), instead of listing
        the whole catalogue and asking for each vector."""
        self.ensure_index()
        clause = _filter_clause(filters) or {"match_all": {}}
        rows: list[list[float]] = []
        items: list[ItemMeta] = []
        seen: set[str] = set()
        for hit in self._scan(clause, True):
            source = hit.get("_source", {})
            item = _item(source)
            if item.sha256 in seen or VECTOR_FIELD not in source:
                continue
            seen.add(item.sha256)
            rows.append(source[VECTOR_FIELD])
            items.append(item)
            if len(items) >= limit:
                break
        matrix = np.asarray(rows, dtype=np.float32).reshape(len(rows), self.dimension)
        return matrix, items

    def holds(self, uri: str) -> bool:
        """Whether ``uri`` is a stored name: one term query (names written moments ago on
        Serverless, not yet searchable, count too)."""
        if not uri:
            return False
        with self._lock:
            if uri in self._recent_names:
                return True
        self.ensure_index()
        body = {"size": 1, "_source": ["uri"],
                "query": {"bool": {"filter": [{"term": {"uri": uri}}]}}}
        response = self._call("term query", self.client.search, index=self.index_name, body=body)
        return bool(response.get("hits", {}).get("hits"))


# -- helpers --------------------------------------------------------------------------------


def _name_key(uri: str) -> str:
    """The document key of a name where custom ids are allowed: rewriting a name replaces its
    document instead of adding one."""
    return hashlib.sha256(uri.encode("utf-8", "surrogateescape")).hexdigest()[:40]


def _document(
    row: np.ndarray, item: ItemMeta, model_id: str, dimension: int, key: str
) -> dict[str, Any]:
    return {
        VECTOR_FIELD: [float(x) for x in row],
        "key": key,
        "uri": item.uri,
        "sha256": item.sha256,
        "label": item.label,
        "model": item.model or model_id,
        "dimension": item.dimension or dimension,
        "width": int(item.width),
        "height": int(item.height),
        "size_bytes": int(item.size_bytes),
        "extra": dict(item.extra),
        # filterable copies (extra itself is not indexed): see search_core.filters
        "category": str(item.extra.get("category", "")),
        "tags": list(item.extra.get("tags", [])),
    }


def _item(source: dict[str, Any]) -> ItemMeta:
    data = {k: v for k, v in source.items() if k not in (VECTOR_FIELD, "key")}
    return ItemMeta.from_dict(data)


def _filter_clause(filters: dict[str, Any] | None) -> dict[str, Any] | None:
    if not filters:
        return None
    terms: list[dict[str, Any]] = []
    for field, value in filters.items():
        if value is None:
            continue
        if field == "source_prefix":  # search_core.filters: the URI starts with it
            terms.append({"prefix": {"uri": str(value)}})
        elif isinstance(value, list | tuple | set | frozenset):
            terms.append({"terms": {field: list(value)}})
        else:
            terms.append({"term": {field: value}})
    return {"bool": {"filter": terms}} if terms else None


def _reason(exc: os_exc.TransportError) -> str:
    info = exc.info if isinstance(exc.info, dict) else {}
    error = info.get("error")
    if isinstance(error, dict):
        return str(error.get("reason") or error.get("type") or error)
    return str(error or exc.error or exc)


def _error_type(exc: os_exc.TransportError) -> str:
    """The error's ``type`` (``resource_already_exists_exception``...): stable across versions,
    unlike the reason text (``index [x] already exists``)."""
    info = exc.info if isinstance(exc.info, dict) else {}
    error = info.get("error")
    if isinstance(error, dict) and error.get("type"):
        return str(error["type"])
    return str(exc.error or "")


def _item_reason(result: dict[str, Any]) -> str:
    error = result.get("error")
    if isinstance(error, dict):
        return f"{error.get('type', 'error')}: {error.get('reason', '')}"
    return str(error or result.get("status", "unknown error"))


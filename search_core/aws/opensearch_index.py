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

import re
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any
from urllib.parse import urlparse

import numpy as np
from botocore.exceptions import BotoCoreError, ClientError
from opensearchpy import OpenSearch, RequestsAWSV4SignerAuth, RequestsHttpConnection, helpers
from opensearchpy import exceptions as os_exc

from search_core.aws.clients import session as aws_session
from search_core.aws.clients import translate_error
from search_core.config import Settings
from search_core.errors import BackendError, ConfigError, SearchError
from search_core.types import ItemMeta, SearchHit

VECTOR_FIELD = "vector"
KEYWORD_FIELDS = ("uri", "sha256", "label", "model", "category", "tags")
INTEGER_FIELDS = ("dimension", "width", "height")
AUTH_MODES = ("auto", "sigv4-aoss", "sigv4-es", "basic", "none")
BULK_DOCS = 200
BULK_BYTES = 5 * 1024 * 1024
TERMS_CHUNK = 500
PAGE = 500
READY_TIMEOUT_S = 90.0
EVENTUAL_CONSISTENCY_NOTE = (
    "OpenSearch Serverless makes newly indexed images searchable only after up to about 60 "
    "seconds; recent additions may not appear in results yet."
)
_REGION_RE = re.compile(r"\.([a-z]{2}(?:-gov|-iso[a-z]?)?-[a-z]+-\d)\.(aoss|es)\.amazonaws\.com$")


def resolve_auth(settings: Settings) -> str:
    """The effective auth mode; ``auto`` decides from the endpoint's host name."""
    mode = settings.opensearch_auth
    if mode not in AUTH_MODES:
        raise ConfigError(f"OPENSEARCH_AUTH={mode!r} is not one of {', '.join(AUTH_MODES)}")
    if mode != "auto":
        return mode
    host = (urlparse(settings.opensearch_endpoint).hostname or "").lower()
    if host.endswith(".aoss.amazonaws.com"):
        return "sigv4-aoss"
    if host.endswith(".es.amazonaws.com") or host.endswith(".on.aws"):
        return "sigv4-es"
    return "basic" if settings.opensearch_username else "none"


def region_of(endpoint: str, default: str) -> str:
    """The region in an AWS OpenSearch host name (it must match the signature), else default."""
    match = _REGION_RE.search((urlparse(endpoint).hostname or "").lower())
    return match.group(1) if match else default


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


def build_client(
    settings: Settings, *, pool: int | None = None, resend: bool = True
) -> OpenSearch:
    """An opensearch-py client for ``settings.opensearch_endpoint`` with the right auth.

    ``resend=False``: the transport never sends a request twice (no retry after a timeout, a
    dropped connection or a 502/503/504), for writes that are not idempotent."""
    endpoint = settings.opensearch_endpoint.strip()
    if not endpoint:
        raise ConfigError("OPENSEARCH_ENDPOINT is not set")
    if "://" not in endpoint:
        endpoint = "https://" + endpoint
    parsed = urlparse(endpoint)
    if parsed.scheme not in {"http", "https"} or not parsed.hostname:
        raise ConfigError(f"OPENSEARCH_ENDPOINT is not an http(s) URL: {endpoint!r}")
    mode = resolve_auth(settings)
    auth: Any = None
    if mode.startswith("sigv4"):
        credentials = aws_session(settings).get_credentials()
        if credentials is None:
            raise BackendError(
                "OpenSearch with SigV4 needs AWS credentials: set AWS_PROFILE or "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or run with a role"
            )
        service = "aoss" if mode == "sigv4-aoss" else "es"
        auth = RequestsAWSV4SignerAuth(
            credentials, region_of(endpoint, settings.aws_region), service
        )
    elif mode == "basic":
        if not settings.opensearch_username:
            raise ConfigError("OPENSEARCH_AUTH=basic needs OPENSEARCH_USERNAME and _PASSWORD")
        auth = (settings.opensearch_username, settings.opensearch_password)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return OpenSearch(
        hosts=[{"host": parsed.hostname, "port": port, "url_prefix": parsed.path.rstrip("/")}],
        http_auth=auth,
        use_ssl=parsed.scheme == "https",
        verify_certs=parsed.scheme == "https",
        ssl_show_warn=False,
        connection_class=RequestsHttpConnection,
        pool_maxsize=max(10, pool or settings.titan_max_concurrency + 2),
        timeout=30,
        max_retries=3 if resend else 0,
        retry_on_timeout=resend,
        retry_on_status=(502, 503, 504) if resend else (),
    )


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
        # Hashes written by this process: AOSS search does not see them for up to ~60 s.
        self._recent: set[str] = set()

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
        """Creates the index if missing, checks the dimension if present, waits until usable."""
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
                    if "already_exists" not in str(_reason(exc)):
                        raise self._error(exc, "create index") from exc
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

    def add(self, vectors: np.ndarray, items: Sequence[ItemMeta]) -> int:
        matrix = np.asarray(vectors, dtype=np.float32)
        if matrix.ndim != 2 or matrix.shape[0] != len(items):
            raise ValueError(f"{len(items)} items but vectors of shape {matrix.shape}")
        if len(items) and matrix.shape[1] != self.dimension:
            raise ConfigError(
                f"vectors have {matrix.shape[1]} dimensions, the index expects {self.dimension}"
            )
        if not len(items):
            return 0
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        if not np.all(np.isfinite(norms)) or np.any(norms == 0):
            raise ValueError("zero or non-finite vector: cannot index it for inner product")
        matrix = matrix / norms
        self.ensure_index()
        known = self.known_hashes(item.sha256 for item in items)
        chosen: list[tuple[np.ndarray, ItemMeta]] = []
        for row, item in zip(matrix, items, strict=True):
            if item.sha256 in known:
                continue
            known.add(item.sha256)
            chosen.append((row, item))
        if not chosen:
            return 0

        def actions() -> Iterator[dict[str, Any]]:
            for row, item in chosen:
                doc = _document(row, item, self.model_id, self.dimension)
                action: dict[str, Any] = {"_op_type": "index", "_index": self.index_name,
                                          "_source": doc}
                if not self.serverless:
                    action["_id"] = item.sha256
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
                self._recent.update(
                    item.sha256 for (_, item), ok in zip(chosen, outcomes, strict=False) if ok
                )
        added = sum(outcomes)
        if any(reason.startswith("index_not_found_exception") for reason in failures):
            self._forget_index()
        if failures:
            raise BackendError(
                f"OpenSearch refused {len(failures)} of {len(chosen)} documents "
                f"(first: {failures[0]}); {added} were written"
            )
        return added

    def search(
        self, vector: np.ndarray, k: int, filters: dict[str, Any] | None = None
    ) -> list[SearchHit]:
        query = np.asarray(vector, dtype=np.float32).reshape(-1)
        if query.shape[0] != self.dimension:
            raise ConfigError(
                f"query has {query.shape[0]} dimensions, the index expects {self.dimension}"
            )
        norm = float(np.linalg.norm(query))
        if norm == 0 or not np.isfinite(norm):
            raise ValueError("zero or non-finite query vector")
        query = query / norm
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
            if item.sha256 in seen:
                continue
            seen.add(item.sha256)
            hits.append(SearchHit(uri=item.uri, score=cosine_from_score(hit["_score"]), item=item))
            if len(hits) == k:
                break
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
        """All matching hits, paged with search_after on sha256 (scroll is not on AOSS).
        Exact duplicates of one hash straddling a page boundary are skipped, which is what
        callers want (items are unique by sha256)."""
        after: list[Any] | None = None
        while True:
            body: dict[str, Any] = {
                "size": PAGE,
                "_source": source,
                "query": query,
                "sort": [{"sha256": "asc"}],
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
        self.ensure_index()
        seen: set[str] = set()
        for hit in self._scan({"match_all": {}}, {"excludes": [VECTOR_FIELD]}):
            item = _item(hit.get("_source", {}))
            if item.sha256 not in seen:
                seen.add(item.sha256)
                yield item

    def delete(self, sha256s: Iterable[str]) -> int:
        wanted = sorted({s for s in sha256s if s})
        if not wanted:
            return 0
        self.ensure_index()
        removed: set[str] = set()
        for start in range(0, len(wanted), TERMS_CHUNK):
            chunk = wanted[start:start + TERMS_CHUNK]
            query = {"bool": {"filter": [{"terms": {"sha256": chunk}}]}}
            targets = [(h["_id"], h["_source"]["sha256"]) for h in self._scan(query, ["sha256"])]
            if not targets:
                continue
            actions = (
                {"_op_type": "delete", "_index": self.index_name, "_id": doc_id}
                for doc_id, _ in targets
            )
            try:
                for ok, _info in helpers.streaming_bulk(
                    self.client, actions, chunk_size=BULK_DOCS, raise_on_error=False,
                    max_retries=3, initial_backoff=1, max_backoff=20,
                ):
                    if not ok:
                        continue
            except (os_exc.OpenSearchException, ClientError, BotoCoreError) as exc:
                raise self._error(exc, "bulk delete") from exc
            removed.update(sha for _, sha in targets)
        with self._lock:
            self._recent.difference_update(wanted)
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


# -- helpers --------------------------------------------------------------------------------


def _document(row: np.ndarray, item: ItemMeta, model_id: str, dimension: int) -> dict[str, Any]:
    return {
        VECTOR_FIELD: [float(x) for x in row],
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
    data = {k: v for k, v in source.items() if k != VECTOR_FIELD}
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


def _item_reason(result: dict[str, Any]) -> str:
    error = result.get("error")
    if isinstance(error, dict):
        return f"{error.get('type', 'error')}: {error.get('reason', '')}"
    return str(error or result.get("status", "unknown error"))


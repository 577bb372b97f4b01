"""A small, faithful stand-in for the OpenSearch data plane, served over real HTTP on 127.0.0.1.

Why: no OpenSearch server can be installed here, and the parts that break in production are
exactly those a mock object would hide -- SigV4 signing with the right service name, request
bodies, knn_vector dimensions, filtered k-NN scoring, and the Serverless rules (no custom ids,
no ``refresh``, documents searchable only after a delay). The real ``opensearch-py`` client
talks to it.

What it does:
- verifies SigV4 with botocore (service, region, access key, secret via the signature,
  session token, payload hash), refusing unsigned or wrongly signed requests with 403;
- create/exists/delete index, mapping checks (knn_vector with faiss/hnsw, dimension);
- ``_bulk`` (index/create/delete), ``_doc``, ``_search`` (knn with filter, match_all, term,
  terms, bool filter, sort + search_after, ``_source`` includes/excludes), ``_count``;
- k-NN answered by exact search, scored like the k-NN plugin's faiss innerproduct translation;
- ``strict=True`` (Serverless): custom ``_id`` on index/create and any ``refresh`` parameter are
  refused with 400; ``visibility_delay`` seconds before new documents are searchable.
- Faults for tests: :meth:`FakeOpenSearch.fail` answers matching requests with an error status
  (optionally after carrying them out, as a gateway that times out late would); after
  :meth:`FakeOpenSearch.stop`, connections still open are dropped without an answer and new
  ones are refused, as with a server that went away.

What it does not do: approximate (HNSW) recall, relevance scoring of text queries, aggregations,
shards/replicas, real AOSS error texts beyond the ones reproduced, TLS.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

FAKE_KEY = "AKIDFAKEFAKEFAKE0001"
FAKE_SECRET = "fake-secret-key-for-tests-only-000000000"


def faiss_ip_score(ip: float) -> float:
    """k-NN plugin: faiss returns -ip; scoreTranslation(raw) = 1/(1+raw) if raw>=0 else 1-raw."""
    raw = -ip
    return 1.0 / (1.0 + raw) if raw >= 0 else 1.0 - raw


@dataclass
class _Fault:
    path_part: str
    status: int
    times: int
    method: str | None
    after_processing: bool
    etype: str


@dataclass
class _Index:
    mapping: dict[str, Any]
    vector_field: str
    dimension: int
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)
    visible_at: dict[str, float] = field(default_factory=dict)


class FakeOpenSearch:
    """``with FakeOpenSearch(strict=True) as fake: fake.url`` -- see the module docstring."""

    def __init__(
        self,
        *,
        strict: bool = True,
        service: str | None = "aoss",
        region: str = "us-east-1",
        access_key: str = FAKE_KEY,
        secret_key: str = FAKE_SECRET,
        token: str | None = None,
        visibility_delay: float = 0.0,
        latency: float = 0.0,
    ) -> None:
        self.strict = strict
        self.service = service  # None: no authentication (self-hosted without security)
        self.region = region
        self.access_key = access_key
        self.secret_key = secret_key
        self.token = token
        self.visibility_delay = visibility_delay
        self.latency = latency
        self.indices: dict[str, _Index] = {}
        self.requests: list[tuple[str, str, bytes]] = []  # (method, path, body)
        self.auth_failures: list[str] = []
        self.faults: list[_Fault] = []
        self.injected: list[tuple[str, str, int]] = []  # (method, path, status) of faults sent
        self.down = False
        self.lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> FakeOpenSearch:
        fake = self
        self.down = False

        class Handler(_Handler):
            server_fake = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.down = True
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeOpenSearch:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def bodies(self, path_part: str) -> list[Any]:
        """JSON bodies of the requests whose path contains ``path_part`` (bulk: raw text)."""
        with self.lock:
            found = [(p, b) for _, p, b in self.requests if path_part in p and b]
        return [b.decode() if "_bulk" in p else json.loads(b) for p, b in found]

    def fail(
        self,
        path_part: str,
        status: int,
        *,
        times: int = 1,
        method: str | None = None,
        after_processing: bool = False,
        etype: str = "",
    ) -> None:
        """The next ``times`` requests whose path contains ``path_part`` (and method, if given)
        get ``status``; with ``after_processing`` the request is carried out first."""
        default = {429: "rejected_execution_exception", 503: "service_unavailable_exception"}
        with self.lock:
            self.faults.append(_Fault(path_part, status, times, method, after_processing,
                                      etype or default.get(status, "internal_server_error")))

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.path_part in path and fault.method in (None, method):
                    fault.times -= 1
                    if fault.times <= 0:
                        self.faults.remove(fault)
                    self.injected.append((method, path, fault.status))
                    return fault
        return None

    def all_docs(self, index: str) -> list[dict[str, Any]]:
        with self.lock:
            if index not in self.indices:
                return []
            return [dict(d) for d in self.indices[index].docs.values()]

    # -- SigV4 --------------------------------------------------------------------------------

    def check_sigv4(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> str | None:
        """None if the request is signed correctly for this service, else the reason."""
        auth = headers.get("authorization", "")
        if not auth.startswith("AWS4-HMAC-SHA256 "):
            return "missing SigV4 Authorization header"
        parts = dict(
            p.strip().split("=", 1) for p in auth[len("AWS4-HMAC-SHA256 "):].split(",") if "=" in p
        )
        try:
            key, date, region, service, terminator = parts["Credential"].split("/")
            signed = parts["SignedHeaders"].split(";")
            signature = parts["Signature"]
        except (KeyError, ValueError):
            return "malformed Authorization header"
        if service != self.service:
            return f"credential scope service is {service!r}, expected {self.service!r}"
        if region != self.region:
            return f"credential scope region is {region!r}, expected {self.region!r}"
        if key != self.access_key:
            return "unknown access key"
        if terminator != "aws4_request":
            return "bad credential scope"
        amz_date = headers.get("x-amz-date", "")
        if not amz_date.startswith(date):
            return "x-amz-date does not match the credential scope date"
        when = dt.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
        if abs((dt.datetime.now(dt.UTC) - when).total_seconds()) > 900:
            return "request time too skewed"
        payload_hash = headers.get("x-amz-content-sha256")
        if payload_hash is None:
            return "missing x-amz-content-sha256 (required by OpenSearch Serverless)"
        if payload_hash != hashlib.sha256(body).hexdigest():
            return "x-amz-content-sha256 does not match the body"
        for required in ("host", "x-amz-date", "x-amz-content-sha256"):
            if required not in signed:
                return f"{required} is not signed"
        if self.token is not None:
            if headers.get("x-amz-security-token") != self.token:
                return "missing or wrong session token"
            if "x-amz-security-token" not in signed:
                return "session token is not signed"
        missing = [h for h in signed if h not in headers]
        if missing:
            return f"signed headers not present: {missing}"
        request = AWSRequest(
            method=method,
            url=f"http://{headers['host']}{path}",
            data=body,
            headers={h: headers[h] for h in signed},
        )
        request.context["timestamp"] = amz_date
        signer = SigV4Auth(
            Credentials(self.access_key, self.secret_key, self.token), self.service, self.region
        )
        expected = signer.signature(
            signer.string_to_sign(request, signer.canonical_request(request)), request
        )
        if expected != signature:
            return "signature does not match"
        return None


class _Handler(BaseHTTPRequestHandler):
    server_fake: FakeOpenSearch
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return

    # -- transport ----------------------------------------------------------------------------

    _override: tuple[int, Any] | None = None

    def _send(self, status: int, payload: Any = None) -> None:
        if self._override is not None:
            status, payload = self._override
            self._override = None
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json; charset=UTF-8")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status: int, etype: str, reason: str) -> None:
        self._send(status, {"error": {"root_cause": [{"type": etype, "reason": reason}],
                                      "type": etype, "reason": reason}, "status": status})

    def _handle(self) -> None:
        fake = self.server_fake
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        if fake.down:  # stopped: drop the connection without an answer
            self.close_connection = True
            return
        if fake.latency:
            time.sleep(fake.latency)
        headers = {k.lower(): v for k, v in self.headers.items()}
        if fake.service is not None:
            problem = fake.check_sigv4(self.command, self.path, headers, body)
            if problem:
                with fake.lock:
                    fake.auth_failures.append(problem)
                self._send(403, {"message": f"The request signature is invalid: {problem}"})
                return
        split = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        parts = [p for p in split.path.split("/") if p]
        with fake.lock:
            fake.requests.append((self.command, self.path, body))
        fault = fake._take_fault(self.command, self.path)
        if fault is not None:
            error = {"error": {"type": fault.etype, "reason": f"injected {fault.status}"},
                     "status": fault.status}
            if not fault.after_processing:
                self._send(fault.status, error)
                return
            self._override = (fault.status, error)
        if fake.strict and "refresh" in query:
            self._error(400, "illegal_argument_exception",
                        "Refresh policy is not supported in OpenSearch Serverless")
            return
        try:
            payload = json.loads(body) if body and not (parts and parts[-1] == "_bulk") else None
        except ValueError:
            self._error(400, "parse_exception", "request body is not valid JSON")
            return
        self._route(parts, query, body, payload)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

    # -- routing ------------------------------------------------------------------------------

    def _route(self, parts: list[str], query: dict[str, str], raw: bytes, body: Any) -> None:
        fake = self.server_fake
        method = self.command
        if not parts:
            self._send(200, {"version": {"distribution": "opensearch", "number": "2.19.0"},
                             "tagline": "fake"})
            return
        if parts == ["_bulk"]:
            self._bulk(None, raw)
            return
        name = parts[0]
        rest = parts[1:]
        with fake.lock:
            index = fake.indices.get(name)
        if not rest:
            if method == "HEAD":
                self._send(200 if index else 404)
            elif method == "PUT":
                self._create(name, body or {})
            elif method == "DELETE":
                if index is None:
                    self._error(404, "index_not_found_exception", f"no such index [{name}]")
                else:
                    with fake.lock:
                        del fake.indices[name]
                    self._send(200, {"acknowledged": True})
            elif method == "GET" and index:
                self._send(200, {name: {"mappings": index.mapping}})
            else:
                self._error(404, "index_not_found_exception", f"no such index [{name}]")
            return
        if index is None and rest[0] != "_bulk":
            self._error(404, "index_not_found_exception", f"no such index [{name}]")
            return
        op = rest[0]
        if op == "_mapping":
            self._send(200, {name: {"mappings": index.mapping}})
        elif op == "_bulk":
            self._bulk(name, raw)
        elif op == "_doc":
            doc_id = rest[1] if len(rest) > 1 else None
            if method == "DELETE" and doc_id:
                status = self._delete_doc(name, doc_id)
                self._send(status, {"result": "deleted" if status == 200 else "not_found"})
                return
            status, result = self._index_doc(name, doc_id, body or {})
            self._send(status, result)
        elif op == "_search":
            self._search(index, body or {})
        elif op == "_count":
            self._send(200, {"count": len(self._visible(index, (body or {}).get("query")))})
        else:
            self._error(400, "illegal_argument_exception", f"unsupported endpoint {op}")

    # -- index management ---------------------------------------------------------------------

    def _create(self, name: str, body: dict[str, Any]) -> None:
        fake = self.server_fake
        with fake.lock:
            if name in fake.indices:
                self._error(400, "resource_already_exists_exception",
                            f"index [{name}] already exists")
                return
        settings = body.get("settings", {})
        knn = settings.get("index", {}).get("knn", settings.get("index.knn"))
        properties = body.get("mappings", {}).get("properties", {})
        vectors = {k: v for k, v in properties.items() if v.get("type") == "knn_vector"}
        if len(vectors) != 1:
            self._error(400, "mapper_parsing_exception", "expected exactly one knn_vector field")
            return
        field_name, spec = next(iter(vectors.items()))
        if knn is not True:
            self._error(400, "illegal_argument_exception", "index.knn must be true for HNSW")
            return
        dim = spec.get("dimension")
        if not isinstance(dim, int) or not 1 <= dim <= 16000:
            self._error(400, "mapper_parsing_exception", f"invalid dimension {dim!r}")
            return
        method = spec.get("method", {})
        if method.get("engine") not in {"faiss", "lucene"} or method.get("name") != "hnsw":
            self._error(400, "mapper_parsing_exception", f"unsupported method {method!r}")
            return
        if method.get("space_type") not in {"innerproduct", "l2", "cosinesimil"}:
            self._error(400, "mapper_parsing_exception", "unsupported space_type")
            return
        with fake.lock:
            fake.indices[name] = _Index(body.get("mappings", {}), field_name, dim)
        self._send(200, {"acknowledged": True, "shards_acknowledged": True, "index": name})

    # -- documents ----------------------------------------------------------------------------

    def _validate_doc(self, index: _Index, doc: dict[str, Any]) -> str | None:
        vector = doc.get(index.vector_field)
        if vector is None:
            return None
        if not isinstance(vector, list) or len(vector) != index.dimension:
            got = len(vector) if isinstance(vector, list) else type(vector).__name__
            return (f"Vector dimension mismatch. Expected: {index.dimension}, Given: {got}")
        if not all(isinstance(x, int | float) for x in vector):
            return "vector values must be numbers"
        return None

    def _index_doc(self, name: str, doc_id: str | None, doc: dict[str, Any]) -> tuple[int, dict]:
        fake = self.server_fake
        if fake.strict and doc_id is not None:
            return 400, {"error": {"type": "illegal_argument_exception",
                                   "reason": "Document ID is not supported in create/index "
                                             "operation request"}, "status": 400}
        with fake.lock:
            index = fake.indices.get(name)
            if index is None:
                return 404, {"error": {"type": "index_not_found_exception",
                                       "reason": f"no such index [{name}]"}, "status": 404}
            problem = self._validate_doc(index, doc)
            if problem:
                return 400, {"error": {"type": "mapper_parsing_exception", "reason": problem},
                             "status": 400}
            doc_id = doc_id or uuid.uuid4().hex[:20]
            created = doc_id not in index.docs
            index.docs[doc_id] = doc
            index.visible_at[doc_id] = time.monotonic() + fake.visibility_delay
        return (201 if created else 200), {"_index": name, "_id": doc_id,
                                           "result": "created" if created else "updated",
                                           "status": 201 if created else 200}

    def _delete_doc(self, name: str, doc_id: str) -> int:
        fake = self.server_fake
        with fake.lock:
            index = fake.indices.get(name)
            if index is None or doc_id not in index.docs:
                return 404
            del index.docs[doc_id]
            index.visible_at.pop(doc_id, None)
        return 200

    def _bulk(self, default_index: str | None, raw: bytes) -> None:
        lines = [line for line in raw.decode().split("\n") if line.strip()]
        items: list[dict[str, Any]] = []
        errors = False
        i = 0
        while i < len(lines):
            action = json.loads(lines[i])
            op, meta = next(iter(action.items()))
            name = meta.get("_index", default_index)
            doc_id = meta.get("_id")
            if op == "delete":
                status = self._delete_doc(name, doc_id) if doc_id else 400
                result: dict[str, Any] = {"_index": name, "_id": doc_id, "status": status,
                                          "result": "deleted" if status == 200 else "not_found"}
                i += 1
            else:
                doc = json.loads(lines[i + 1])
                i += 2
                status, result = self._index_doc(name, doc_id, doc)
                result.setdefault("status", status)
                result.setdefault("_index", name)
            if status >= 300 and op != "delete":
                errors = True
            items.append({op: result})
        self._send(200, {"took": 1, "errors": errors, "items": items})

    # -- search -------------------------------------------------------------------------------

    def _matches(self, doc: dict[str, Any], query: dict[str, Any] | None) -> bool:
        if not query or "match_all" in query:
            return True
        if "term" in query or "terms" in query:  # keyword arrays match on any element
            (fname, value), = (query.get("term") or query["terms"]).items()
            value = value["value"] if isinstance(value, dict) else value
            wanted = value if "terms" in query else [value]
            present = doc.get(fname)
            present = present if isinstance(present, list) else [present]
            return any(v in wanted for v in present)
        if "prefix" in query:
            (fname, value), = query["prefix"].items()
            value = value["value"] if isinstance(value, dict) else value
            return str(doc.get(fname, "")).startswith(value)
        if "bool" in query:
            clauses = query["bool"]
            for key in ("filter", "must"):
                sub = clauses.get(key, [])
                for clause in sub if isinstance(sub, list) else [sub]:
                    if not self._matches(doc, clause):
                        return False
            return True
        raise ValueError(f"unsupported query {list(query)}")

    def _visible(self, index: _Index, query: dict[str, Any] | None) -> list[tuple[str, dict]]:
        now = time.monotonic()
        with self.server_fake.lock:
            docs = [(i, d) for i, d in index.docs.items() if index.visible_at.get(i, 0) <= now]
        return [(i, d) for i, d in docs if self._matches(d, query)]

    @staticmethod
    def _source(doc: dict[str, Any], spec: Any) -> dict[str, Any] | None:
        if spec is False:
            return None
        if spec is None or spec is True:
            return dict(doc)
        if isinstance(spec, str):
            spec = [spec]
        if isinstance(spec, list):
            return {k: v for k, v in doc.items() if k in spec}
        includes = spec.get("includes") or spec.get("include")
        excludes = set(spec.get("excludes") or spec.get("exclude") or [])
        out = {k: v for k, v in doc.items() if k not in excludes}
        return {k: v for k, v in out.items() if k in includes} if includes else out

    def _search(self, index: _Index, body: dict[str, Any]) -> None:
        query = body.get("query") or {"match_all": {}}
        size = int(body.get("size", 10))
        if "knn" in query:
            (fname, spec), = query["knn"].items()
            if fname != index.vector_field:
                self._error(400, "illegal_argument_exception", f"{fname} is not a knn_vector")
                return
            vector = spec.get("vector")
            if not isinstance(vector, list) or len(vector) != index.dimension:
                self._error(400, "illegal_argument_exception",
                            f"Query vector has invalid dimension: {len(vector or [])}. "
                            f"Dimension should be: {index.dimension}")
                return
            k = int(spec.get("k", size))
            candidates = self._visible(index, spec.get("filter"))
            q = np.asarray(vector, dtype=np.float64)
            scored = [(faiss_ip_score(float(np.dot(q, np.asarray(d[fname])))), i, d)
                      for i, d in candidates]
            scored.sort(key=lambda t: -t[0])
            scored = scored[: min(k, size)]
            hits = [{"_index": "x", "_id": i, "_score": s,
                     "_source": self._source(d, body.get("_source"))} for s, i, d in scored]
        else:
            try:
                matched = self._visible(index, query)
            except ValueError as exc:
                self._error(400, "parsing_exception", str(exc))
                return
            sort = body.get("sort")
            hits_raw = matched
            fields: list[str] = []
            if sort:
                # every sort key in order (ascending), missing values first as "" -- like
                # OpenSearch, documents tying on every key have no defined order between pages
                for spec in sort:
                    (name, _order), = (spec if isinstance(spec, dict) else {spec: "asc"}).items()
                    fields.append(name)

                def sort_key(t: tuple[str, dict]) -> tuple[str, ...]:
                    return tuple(str(t[1].get(f) or "") for f in fields)

                hits_raw = sorted(matched, key=sort_key)
                after = body.get("search_after")
                if after:
                    bound = tuple(str(v or "") for v in after)
                    hits_raw = [t for t in hits_raw if sort_key(t) > bound]
            hits = []
            for i, d in hits_raw[:size]:
                hit = {"_index": "x", "_id": i, "_score": 1.0,
                       "_source": self._source(d, body.get("_source"))}
                if sort:
                    hit["sort"] = [d.get(f) for f in fields]
                hits.append(hit)
        self._send(200, {"took": 1, "timed_out": False,
                         "hits": {"total": {"value": len(hits), "relation": "eq"},
                                  "max_score": hits[0]["_score"] if hits else None,
                                  "hits": hits}})

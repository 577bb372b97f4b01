"""OpenSearchIndex through the real opensearch-py client against ``fake_opensearch`` (real HTTP
on 127.0.0.1, SigV4 verified with botocore, Serverless rules in strict mode), plus a real
OpenSearch when ``OPENSEARCH_URL`` is set.

Not covered (needs the real services): HNSW recall and latency (the fake answers by exact
search), AOSS's real error texts, IAM / data-access-policy evaluation, index creation delays
longer than our wait, TLS, shard/replica behaviour, and the real ~60 s visibility delay (the fake
reproduces the behaviour with a configurable delay).
"""

from __future__ import annotations

import json
import os
import uuid

import numpy as np
import pytest
from fake_opensearch import FAKE_KEY, FakeOpenSearch, faiss_ip_score
from opensearchpy import OpenSearch, RequestsAWSV4SignerAuth, RequestsHttpConnection
from opensearchpy.exceptions import RequestError

from search_core.aws import clients
from search_core.aws.opensearch_index import (
    OpenSearchIndex,
    cosine_from_score,
    region_of,
    resolve_auth,
    score_from_cosine,
)
from search_core.config import Settings
from search_core.errors import BackendError, ConfigError
from search_core.types import ItemMeta

pytestmark = pytest.mark.usefixtures("fake_aws")


@pytest.fixture
def aoss() -> FakeOpenSearch:
    with FakeOpenSearch(strict=True, service="aoss") as fake:
        yield fake


def _settings(url: str, auth: str = "sigv4-aoss", **extra) -> Settings:
    return Settings(index="opensearch", opensearch_endpoint=url, opensearch_auth=auth,
                    opensearch_index="visual-search", opensearch_hnsw_m=24,
                    opensearch_ef_construction=256, aws_region="us-east-1", **extra)


def _data(n: int, dim: int = 8, seed: int = 0) -> tuple[np.ndarray, list[ItemMeta]]:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    items = [ItemMeta(uri=f"s3://b/{i}.jpg", sha256=f"{i:064x}", label=("shoe", "bag")[i % 2],
                      width=100 + i, height=50, size_bytes=1000 + i, model="titan",
                      dimension=dim, extra={"version": f"v{i}"}) for i in range(n)]
    return vectors, items


def test_creates_index_with_explicit_knn_mapping(aoss: FakeOpenSearch) -> None:
    index = OpenSearchIndex(_settings(aoss.url), dimension=8, model_id="titan")
    assert index.count() == 0
    bodies = aoss.bodies("/visual-search")
    (created,) = [b for b in bodies if isinstance(b, dict) and "mappings" in b]
    assert created["settings"] == {"index": {"knn": True}}
    props = created["mappings"]["properties"]
    assert props["vector"] == {
        "type": "knn_vector", "dimension": 8,
        "method": {"name": "hnsw", "engine": "faiss", "space_type": "innerproduct",
                   "parameters": {"m": 24, "ef_construction": 256}},
    }
    for name in ("uri", "sha256", "label", "model"):
        assert props[name] == {"type": "keyword"}
    for name in ("dimension", "width", "height"):
        assert props[name]["type"] == "integer"
    assert not aoss.auth_failures


def test_serverless_bulk_without_ids_or_refresh_and_dedup(aoss: FakeOpenSearch) -> None:
    vectors, items = _data(30)
    index = OpenSearchIndex(_settings(aoss.url), dimension=8, model_id="titan")
    assert index.add(vectors, items) == 30
    assert index.add(vectors, items) == 0  # re-run: nothing duplicated
    doubled = np.concatenate([vectors[:3], vectors[:3]])
    assert index.add(doubled, items[:3] + items[:3]) == 0
    assert index.count() == 30
    assert sorted(d["sha256"] for d in aoss.all_docs("visual-search")) == sorted(
        i.sha256 for i in items)
    bulk = "\n".join(aoss.bodies("_bulk"))
    assert '"_id"' not in bulk
    assert not any("refresh" in path for _, path, _ in aoss.requests)
    # A fresh process (no memory of what it wrote) still deduplicates via the terms query.
    other = OpenSearchIndex(_settings(aoss.url), dimension=8, model_id="titan")
    assert other.add(vectors, items) == 0 and other.known_hashes([items[0].sha256, "x"]) == {
        items[0].sha256}


def test_fake_server_rejects_what_aoss_rejects(aoss: FakeOpenSearch) -> None:
    """The strict fake must refuse custom ids and refresh, or the test above proves nothing."""
    index = OpenSearchIndex(_settings(aoss.url), dimension=8)
    index.ensure_index()
    raw = index.client
    attempts = [
        ("Document ID is not supported", dict(id="abc", body={"uri": "x"})),
        ("Refresh policy is not supported", dict(body={"uri": "x"}, params={"refresh": "true"})),
        ("Vector dimension mismatch", dict(body={"vector": [0.1, 0.2]})),
    ]
    for reason, kwargs in attempts:
        with pytest.raises(RequestError) as info:
            raw.index(index="visual-search", **kwargs)
        assert reason in info.value.info["error"]["reason"]


def test_recent_writes_dedup_before_they_are_searchable() -> None:
    with FakeOpenSearch(strict=True, visibility_delay=120.0) as fake:
        index = OpenSearchIndex(_settings(fake.url), dimension=8)
        vectors, items = _data(5)
        assert index.add(vectors, items) == 5
        assert index.count() == 0  # like AOSS: not searchable yet
        assert index.add(vectors, items) == 0  # still no duplicates
        assert len(fake.all_docs("visual-search")) == 5
        stats = index.stats()
        assert stats["serverless"] and "60 seconds" in stats["eventual_consistency_note"]


def test_knn_search_scores_are_cosine_and_filters_apply(aoss: FakeOpenSearch) -> None:
    vectors, items = _data(40, seed=3)
    index = OpenSearchIndex(_settings(aoss.url), dimension=8)
    index.add(vectors, items)
    query = vectors[7] + 0.3 * vectors[8]
    hits = index.search(query, k=5)
    expected = vectors @ (query / np.linalg.norm(query))
    order = np.argsort(-expected)[:5]
    assert [h.uri for h in hits] == [items[i].uri for i in order]
    assert [h.score for h in hits] == pytest.approx([float(expected[i]) for i in order], abs=1e-5)
    assert hits[0].item.extra == {"version": "v7"} and hits[0].item.width == 107

    bags = index.search(query, k=50, filters={"label": "bag"})
    assert len(bags) == 20 and all(h.item.label == "bag" for h in bags)
    assert min(h.score for h in bags) < 0  # negative cosines are converted back too
    (body,) = [b for b in aoss.bodies("_search") if "knn" in b.get("query", {})][-1:]
    knn = body["query"]["knn"]["vector"]
    assert body["_source"] == {"excludes": ["vector"]}
    assert knn["filter"] == {"bool": {"filter": [{"term": {"label": "bag"}}]}}
    several = index.search(query, k=50, filters={"label": ["bag", "shoe"], "width": 107})
    assert [h.uri for h in several] == [items[7].uri]


def test_items_delete_reset(aoss: FakeOpenSearch) -> None:
    vectors, items = _data(1203)  # more than two pages of search_after
    index = OpenSearchIndex(_settings(aoss.url), dimension=8)
    assert index.add(vectors, items) == 1203
    listed = list(index.items())
    assert len(listed) == 1203 and {i.sha256 for i in listed} == {i.sha256 for i in items}
    assert index.delete([items[0].sha256, items[1].sha256, "missing"]) == 2
    assert index.count() == 1201
    assert index.add(vectors[:1], items[:1]) == 1  # deleted hashes may come back
    index.reset()
    assert index.count() == 0 and index.known_hashes([items[5].sha256]) == set()


def test_existing_index_with_other_dimension_is_refused(aoss: FakeOpenSearch) -> None:
    OpenSearchIndex(_settings(aoss.url), dimension=8).ensure_index()
    with pytest.raises(ConfigError, match="8-dimensional"):
        OpenSearchIndex(_settings(aoss.url), dimension=16).ensure_index()
    index = OpenSearchIndex(_settings(aoss.url), dimension=8)
    with pytest.raises(ConfigError):
        index.add(np.ones((1, 4), np.float32), [ItemMeta(uri="u", sha256="s")])


def test_wrong_signatures_are_refused(aoss: FakeOpenSearch) -> None:
    with pytest.raises(BackendError, match="403"):
        OpenSearchIndex(_settings(aoss.url, auth="sigv4-es"), dimension=8).count()
    assert "expected 'aoss'" in aoss.auth_failures[-1]
    with pytest.raises(BackendError, match="403"):
        OpenSearchIndex(_settings(aoss.url, auth="none"), dimension=8).count()
    assert "missing SigV4" in aoss.auth_failures[-1]
    bad = OpenSearch(
        hosts=[aoss.url],
        http_auth=RequestsAWSV4SignerAuth(
            __import__("botocore.credentials").credentials.Credentials(FAKE_KEY, "wrong"),
            "us-east-1", "aoss"),
        connection_class=RequestsHttpConnection,
    )
    with pytest.raises(BackendError, match="403"):
        OpenSearchIndex(_settings(aoss.url), dimension=8, client=bad).count()
    assert aoss.auth_failures[-1] == "signature does not match"


def test_session_token_is_signed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session-token-123")
    clients._session_for.cache_clear()
    with FakeOpenSearch(strict=True, token="session-token-123") as fake:
        assert OpenSearchIndex(_settings(fake.url), dimension=8).count() == 0
        assert not fake.auth_failures


def test_self_hosted_uses_name_ids_and_is_idempotent() -> None:
    from search_core.aws.opensearch_index import _name_key

    with FakeOpenSearch(strict=False, service=None) as fake:
        index = OpenSearchIndex(_settings(fake.url, auth="none"), dimension=8)
        assert not index.serverless
        vectors, items = _data(10)
        assert index.add(vectors, items) == 10
        assert '"_id":"' + _name_key(items[0].uri) in "\n".join(fake.bodies("_bulk"))
        again = OpenSearchIndex(_settings(fake.url, auth="none"), dimension=8)
        assert again.add(vectors, items) == 0 and len(fake.all_docs("visual-search")) == 10
        assert index.stats()["eventual_consistency_note"] == ""


def test_connection_errors_are_clear() -> None:
    index = OpenSearchIndex(_settings("http://127.0.0.1:9", auth="none"), dimension=8)
    index._client = OpenSearch(hosts=["http://127.0.0.1:9"], max_retries=0,
                               connection_class=RequestsHttpConnection)
    with pytest.raises(BackendError, match="cannot connect"):
        index.count()


def test_auth_resolution_and_region() -> None:
    def auth(url: str, **kw) -> str:
        return resolve_auth(Settings(opensearch_endpoint=url, **kw))

    assert auth("https://abc123.eu-west-2.aoss.amazonaws.com") == "sigv4-aoss"
    assert auth("https://search-x-abc.us-east-1.es.amazonaws.com") == "sigv4-es"
    assert auth("http://localhost:9200") == "none"
    assert auth("http://localhost:9200", opensearch_username="admin") == "basic"
    assert auth("http://x", opensearch_auth="sigv4-aoss") == "sigv4-aoss"
    with pytest.raises(ConfigError):
        auth("http://x", opensearch_auth="kerberos")
    assert region_of("https://abc.eu-west-2.aoss.amazonaws.com", "us-east-1") == "eu-west-2"
    assert region_of("http://127.0.0.1:9200", "us-east-1") == "us-east-1"


@pytest.mark.parametrize("ip", [1.0, 0.83, 0.0, -0.2, -0.999])
def test_score_translation_round_trip(ip: float) -> None:
    assert score_from_cosine(ip) == pytest.approx(faiss_ip_score(ip))
    assert cosine_from_score(faiss_ip_score(ip)) == pytest.approx(ip, abs=1e-9)


@pytest.mark.skipif(not os.environ.get("OPENSEARCH_URL"),
                    reason="set OPENSEARCH_URL (e.g. http://localhost:9200) to test a real "
                           "OpenSearch; none can be installed in this environment")
def test_real_opensearch() -> None:
    url = os.environ["OPENSEARCH_URL"]
    name = f"test-visual-search-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        index="opensearch", opensearch_endpoint=url, opensearch_index=name,
        opensearch_auth=os.environ.get("OPENSEARCH_AUTH", "auto"),
        opensearch_username=os.environ.get("OPENSEARCH_USERNAME", ""),
        opensearch_password=os.environ.get("OPENSEARCH_PASSWORD", ""),
    )
    index = OpenSearchIndex(settings, dimension=8)
    try:
        vectors, items = _data(20)
        assert index.add(vectors, items) == 20
        index.client.indices.refresh(index=name)  # test only: not allowed on AOSS
        hits = index.search(vectors[3], k=3)
        assert hits[0].uri == items[3].uri and hits[0].score == pytest.approx(1.0, abs=1e-3)
        assert all(h.item.label == "shoe" for h in index.search(vectors[3], 5, {"label": "shoe"}))
        assert index.add(vectors, items) == 0
    finally:
        index.client.indices.delete(index=name, ignore=[404])
    assert json.dumps(index.stats()["backend"]) == '"opensearch"'


# -- issue 10: names and contents, complete deletes, the create race, readiness --------------


def _raw_doc(vector: np.ndarray, uri: str, sha: str, key: str | None) -> dict:
    doc = {"vector": [float(x) for x in vector], "uri": uri, "sha256": sha, "label": "x",
           "model": "titan", "dimension": 8, "width": 1, "height": 1, "size_bytes": 1,
           "extra": {}}
    if key is not None:
        doc["key"] = key
    return doc


@pytest.mark.parametrize("with_key", [True, False], ids=["keyed", "legacy-no-key"])
def test_delete_removes_every_copy_across_page_boundaries(
    aoss: FakeOpenSearch, monkeypatch: pytest.MonkeyPatch, with_key: bool
) -> None:
    """Three documents of one hash (AOSS may store a bulk twice) straddling pages of 2: the
    old sha256-only paging skipped the copies after a page boundary (2 of 3 stayed)."""
    from search_core.aws import opensearch_index

    monkeypatch.setattr(opensearch_index, "PAGE", 2)
    vectors, items = _data(5)
    index = OpenSearchIndex(_settings(aoss.url), dimension=8, model_id="titan")
    index.add(vectors, items)
    for _ in range(3):
        index.client.index(index="visual-search", body=_raw_doc(
            vectors[2], items[2].uri, items[2].sha256, uuid.uuid4().hex if with_key else None))
    assert sum(d["sha256"] == items[2].sha256 for d in aoss.all_docs("visual-search")) == 4
    assert index.delete([items[2].sha256]) == 1
    left = [d["sha256"] for d in aoss.all_docs("visual-search")]
    assert items[2].sha256 not in left and len(left) == 4
    assert all(h.item.sha256 != items[2].sha256 for h in index.search(vectors[2], 10))


def test_names_and_contents_apart(aoss: FakeOpenSearch) -> None:
    """A copy or a rename is linked with the stored vector (no embedding); removing one name
    keeps the content for the other; a name that changes content loses the old document."""
    vectors, items = _data(3)
    index = OpenSearchIndex(_settings(aoss.url), dimension=8, model_id="titan")
    assert index.add(vectors, items) == 3
    copy = ItemMeta(uri="s3://b/copy.jpg", sha256=items[0].sha256, dimension=8)
    unknown = ItemMeta(uri="s3://b/new.jpg", sha256="f" * 64, dimension=8)
    assert index.link([copy, unknown]) == [unknown]
    names = {i.uri: i.sha256 for i in index.items()}
    assert names[copy.uri] == items[0].sha256 and len(names) == 4
    assert index.remove([items[0].uri]) == 1
    hits = index.search(vectors[0], 2)
    assert hits[0].uri == copy.uri and hits[0].score == pytest.approx(1.0, abs=1e-5)
    edited = ItemMeta(uri=items[1].uri, sha256="e" * 64, dimension=8)
    assert index.add(vectors[2:3], [edited]) == 1
    docs = [(d["uri"], d["sha256"]) for d in aoss.all_docs("visual-search")]
    assert (items[1].uri, items[1].sha256) not in docs and (items[1].uri, "e" * 64) in docs
    assert len({d["key"] for d in aoss.all_docs("visual-search")}) == len(docs)  # unique keys


def test_two_processes_creating_the_index_at_once(aoss: FakeOpenSearch) -> None:
    """The loser of the create race gets the real 400 body ({"type":
    "resource_already_exists_exception", "reason": "index [x] already exists"}) and goes on."""
    first = OpenSearchIndex(_settings(aoss.url), dimension=8)
    first.ensure_index()
    aoss.fail("/visual-search", 404, method="HEAD")  # the second checked before it existed
    second = OpenSearchIndex(_settings(aoss.url), dimension=8)
    second.ensure_index()
    assert second.count() == 0
    assert any(status == 404 for _, _, status in aoss.injected)
    mismatched = OpenSearchIndex(_settings(aoss.url), dimension=16)
    aoss.fail("/visual-search", 404, method="HEAD")
    with pytest.raises(ConfigError, match="holds 8-dimensional"):
        mismatched.ensure_index()


def test_query_vectors_are_checked_like_the_local_index(
    aoss: FakeOpenSearch, tmp_path
) -> None:
    from search_core.local_index import LocalIndex
    from search_core.vector_check import VectorError

    remote = OpenSearchIndex(_settings(aoss.url), dimension=8)
    local = LocalIndex(tmp_path, dimension=8, model_id="m")
    for bad in (np.zeros(8), np.ones(4), np.full(8, np.nan)):
        messages = []
        for index in (remote, local):
            with pytest.raises(VectorError) as info:
                index.search(bad, 3)
            messages.append(str(info.value))
        assert messages[0] == messages[1]


def test_readiness_does_not_wait_for_a_hanging_index(tmp_path) -> None:
    """An endpoint that accepts connections and never answers (an AOSS slowdown): /healthz's
    readiness answers at once, ready on the models alone, the index state as information."""
    import socket

    from search_core.models.efficientnet import EfficientNetEmbedder
    from search_core.pipeline import SearchPipeline

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        settings = _settings(url, auth="none")
        embedder = EfficientNetEmbedder(Settings().models_dir)
        embedder.load()
        pipeline = SearchPipeline(settings, detector=None, embedder=embedder,
                                  index=OpenSearchIndex(settings, dimension=1280))
        health = pipeline.health()
        again = pipeline.health()
    assert health["ready"] and again["ready"] and health["backend"] == "opensearch"
    # answered while the count is still hanging (the client waits 30 s, with retries)
    assert health["index_reachable"] is None and again["index_reachable"] is None


def test_lookups_by_content_id(aoss: FakeOpenSearch) -> None:
    """More like this / near-duplicate folding / keyword search by tags on OpenSearch: stored
    vectors by id, a result list's vectors in one terms query, items by id, filtered vectors."""
    from search_core.duplicates import collapse_near_duplicates

    vectors, items = _data(100, seed=5)
    items = [ItemMeta(**{**i.to_dict(), "extra": {"tags": [("shoe", "bag")[n % 2]]}})
             for n, i in enumerate(items)]
    index = OpenSearchIndex(_settings(aoss.url), dimension=8)
    index.add(vectors, items)
    assert np.allclose(index.vector_of(items[3].sha256), vectors[3], atol=1e-6)
    assert index.vector_of("f" * 64) is None
    assert index.item_of(items[4].sha256) == items[4] and index.item_of("f" * 64) is None

    hits = index.search(vectors[0], k=35)
    before = len(aoss.bodies("_search"))
    collapse_near_duplicates(hits, index.vector_of, 0.5)
    (lookup,) = aoss.bodies("_search")[before:]  # one terms query for the whole list
    assert lookup["query"]["bool"]["filter"][0]["terms"]["sha256"]
    collapse_near_duplicates(hits, index.vector_of, 0.5)
    assert len(aoss.bodies("_search")) == before + 1  # then cached

    # a list from elsewhere (the adaptation's in-memory search), announced before folding
    cold = OpenSearchIndex(_settings(aoss.url), dimension=8)  # nothing cached yet
    announced = [i.sha256 for i in items[50:80]]
    cold.expect_lookups(announced)
    before = len(aoss.bodies("_search"))
    assert all(cold.vector_of(sha) is not None for sha in announced)
    assert len(aoss.bodies("_search")) == before + 1

    matrix, bags = index.vectors_where({"tags": ["bag"]}, limit=30)
    assert len(bags) == 30 and all(i.extra["tags"] == ["bag"] for i in bags)
    rows = {i.sha256: n for n, i in enumerate(items)}
    assert np.allclose(matrix, vectors[[rows[i.sha256] for i in bags]], atol=1e-6)
    index.delete([items[3].sha256])
    assert index.vector_of(items[3].sha256) is None  # the cache forgets deleted contents
